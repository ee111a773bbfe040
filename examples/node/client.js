// Calling chime-gateway from Node.js: create a user with a request id and a deadline, retry it
// safely, and read the rich error of a duplicate.
//
//   npm ci && node client.js 127.0.0.1:50051
//   node client.js unix:/var/run/chime-gateway/grpc.sock   (a gateway on a Unix socket)
'use strict';

const path = require('node:path');
const assert = require('node:assert');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const googleProtos = require('google-proto-files');

const PROTO_ROOT = path.resolve(__dirname, '../../proto');
const DEMO_ACCOUNT = '12a3456b-7c89-012d-3456-78901e23fg45';

const definition = protoLoader.loadSync('chime/v1/chime.proto', {
  includeDirs: [PROTO_ROOT, googleProtos.getProtoPath('..')],
  keepCase: true,
  enums: String,
  defaults: true,
  oneofs: true,
});
const chime = grpc.loadPackageDefinition(definition).chime.v1;

// google.rpc.Status and its details, to read the grpc-status-details-bin trailer.
const rpcTypes = protobuf.loadSync([
  googleProtos.getProtoPath('rpc/status.proto'),
  googleProtos.getProtoPath('rpc/error_details.proto'),
]);
const Status = rpcTypes.lookupType('google.rpc.Status');

function richError(err) {
  const found = { code: grpc.status[err.code], message: err.details };
  const bin = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!bin) return found;
  for (const any of Status.decode(bin).details) {
    const name = any.type_url.split('/').pop();
    found[name.split('.').pop()] = rpcTypes.lookupType(name).decode(any.value);
  }
  return found;
}

function createUser(client, request, previousAttempts = 0) {
  // Always set a deadline: the gateway bounds its upstream attempts by it.
  const deadline = new Date(Date.now() + 5000);
  // A retry says so, so that a gateway that never saw the first call (restarted, or another
  // pod's) still settles a conflict by looking the user up.
  const metadata = new grpc.Metadata();
  if (previousAttempts > 0) metadata.set('x-chime-gateway-previous-attempts', String(previousAttempts));
  return new Promise((resolve, reject) => {
    const call = client.CreateUser(request, metadata, { deadline }, (err, response) => {
      if (err) reject(err);
      else resolve({ response, requestId: call.requestId, replayed: call.replayed });
    });
    call.on('metadata', (md) => {
      call.requestId = md.get('x-amzn-requestid')[0];
      call.replayed = md.get('x-chime-gateway-replayed')[0] === 'true';
    });
  });
}

async function main() {
  const target = process.argv[2] || '127.0.0.1:50051';
  const client = new chime.ChimeService(target, grpc.credentials.createInsecure());
  const email = `node-${crypto.randomUUID().slice(0, 12)}@example.com`;
  // A new request id per user to create, sent again unchanged with every retry of it.
  const request = {
    account_id: DEMO_ACCOUNT, email, user_type: 'USER_TYPE_PRIVATE_USER', request_id: crypto.randomUUID(),
  };

  const { response, requestId } = await createUser(client, request);
  const user = response.user;
  console.log(`created ${user.user_id} (${user.user_registration_status}, ${user.user_invitation_status}), request id ${requestId}`);
  assert.strictEqual(user.primary_email, email);

  // A retry with the same request id (after a timeout, say) gets the same user, not a conflict.
  const again = await createUser(client, request, 1);
  console.log(`retried: ${again.response.user.user_id}, replayed=${again.replayed}`);
  assert.strictEqual(again.response.user.user_id, user.user_id);
  assert.strictEqual(again.replayed, true);

  // Another create of the same email: ALREADY_EXISTS, with ErrorInfo (reason CONFLICT).
  try {
    await createUser(client, { ...request, request_id: crypto.randomUUID() });
    assert.fail('expected ALREADY_EXISTS for a duplicate email');
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    const details = richError(err);
    const info = details.ErrorInfo;
    console.log(`duplicate: ${details.code} reason=${info.reason} domain=${info.domain} http_status=${info.metadata.http_status}`);
    assert.strictEqual(err.code, grpc.status.ALREADY_EXISTS);
    assert.strictEqual(info.reason, 'CONFLICT');
    if (details.RetryInfo) console.log(`retry after ${details.RetryInfo.retryDelay.seconds}s`);
  }
  client.close();
  console.log('node example: OK');
}

main().catch((err) => { console.error(err); process.exit(1); });
