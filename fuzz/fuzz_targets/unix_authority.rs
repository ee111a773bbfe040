//! Untrusted bytes from a client on the Unix socket, through the `:authority` mender under h2.

fn main() {
    afl::fuzz!(|data: &[u8]| chime_gateway::fuzzing::unix_authority(data));
}
