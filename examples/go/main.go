// Calling chime-gateway from Go: create a user with a request id and a deadline, retry it
// safely, and read the rich error of a duplicate.
//
//	chime-example -target 127.0.0.1:50051
//	chime-example -target unix:/var/run/chime-gateway/grpc.sock   (a gateway on a Unix socket)
//
// The stubs in chimev1 are generated from ../../proto; see README.md to build and regenerate.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log"
	"strconv"
	"strings"
	"time"
	"unicode"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	chimev1 "github.com/chime-gateway/chime-gateway/examples/go/chimev1"
)

const demoAccount = "12a3456b-7c89-012d-3456-78901e23fg45"

// newUUID returns a random (version 4) UUID in its canonical text form.
func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		log.Fatalf("reading random bytes: %v", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// codeName spells a gRPC code as the other languages do: AlreadyExists -> ALREADY_EXISTS.
func codeName(c codes.Code) string {
	var out []rune
	prev := rune(0)
	for _, r := range c.String() {
		if unicode.IsUpper(r) && unicode.IsLower(prev) {
			out = append(out, '_')
		}
		out = append(out, unicode.ToUpper(r))
		prev = r
	}
	return string(out)
}

// richError holds the google.rpc details the gateway attaches to every error.
type richError struct {
	Code        codes.Code
	Message     string
	ErrorInfo   *errdetails.ErrorInfo
	RetryInfo   *errdetails.RetryInfo
	RequestInfo *errdetails.RequestInfo
	BadRequest  *errdetails.BadRequest
}

func readRichError(err error) richError {
	st := status.Convert(err)
	found := richError{Code: st.Code(), Message: st.Message()}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			found.ErrorInfo = d
		case *errdetails.RetryInfo:
			found.RetryInfo = d
		case *errdetails.RequestInfo:
			found.RequestInfo = d
		case *errdetails.BadRequest:
			found.BadRequest = d
		}
	}
	return found
}

// createUser calls CreateUser with a deadline and returns the answer with its initial metadata.
func createUser(client chimev1.ChimeServiceClient, req *chimev1.CreateUserRequest, previousAttempts int) (*chimev1.CreateUserResponse, metadata.MD, error) {
	// Always set a deadline: the gateway bounds its upstream attempts by it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if previousAttempts > 0 {
		// A retry says so, so that a gateway that never saw the first call (restarted, or
		// another pod's) still settles a conflict by looking the user up. grpc-go's own retry
		// policy sends grpc-previous-rpc-attempts, which the gateway reads too.
		ctx = metadata.AppendToOutgoingContext(ctx, "x-chime-gateway-previous-attempts", strconv.Itoa(previousAttempts))
	}
	var header metadata.MD
	resp, err := client.CreateUser(ctx, req, grpc.Header(&header))
	return resp, header, err
}

func first(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func check(ok bool, format string, args ...interface{}) {
	if !ok {
		log.Fatalf("check failed: "+format, args...)
	}
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "HOST:PORT or unix:/path/to/socket")
	account := flag.String("account", demoAccount, "the Amazon Chime account ID")
	flag.Parse()

	// Defaults alone, over TCP and over a Unix socket (unix:/path).
	conn, err := grpc.Dial(*target, grpc.WithInsecure())
	if err != nil {
		log.Fatalf("dial %s: %v", *target, err)
	}
	defer conn.Close()
	client := chimev1.NewChimeServiceClient(conn)

	email := "go-" + strings.ReplaceAll(newUUID(), "-", "")[:12] + "@example.com"
	// A new request id per user to create, sent again unchanged with every retry of it.
	request := &chimev1.CreateUserRequest{
		AccountId: *account,
		Email:     &email,
		UserType:  chimev1.UserType_USER_TYPE_PRIVATE_USER,
		RequestId: newUUID(),
	}

	resp, header, err := createUser(client, request, 0)
	if err != nil {
		log.Fatalf("CreateUser: %v", err)
	}
	user := resp.GetUser()
	fmt.Printf("created %s (%s, %s), request id %s\n", user.GetUserId(), user.GetUserRegistrationStatus(),
		user.GetUserInvitationStatus(), first(header, "x-amzn-requestid"))
	check(user.GetPrimaryEmail() == email && user.GetUserId() != "", "unexpected user %v", user)

	// A retry with the same request id (after a timeout, say) gets the same user, not a conflict.
	again, header, err := createUser(client, request, 1)
	if err != nil {
		log.Fatalf("CreateUser (retry): %v", err)
	}
	replayed := first(header, "x-chime-gateway-replayed")
	fmt.Printf("retried: %s, replayed=%s\n", again.GetUser().GetUserId(), replayed)
	check(again.GetUser().GetUserId() == user.GetUserId() && replayed == "true",
		"a retry should replay the first answer, got %v (replayed=%q)", again.GetUser(), replayed)

	// Another create of the same email: ALREADY_EXISTS, with ErrorInfo (reason CONFLICT).
	duplicate := &chimev1.CreateUserRequest{AccountId: *account, Email: &email, RequestId: newUUID()}
	_, _, err = createUser(client, duplicate, 0)
	check(err != nil, "expected ALREADY_EXISTS for a duplicate email")
	details := readRichError(err)
	info := details.ErrorInfo
	check(info != nil, "no google.rpc.ErrorInfo in %v", err)
	fmt.Printf("duplicate: %s reason=%s domain=%s http_status=%s\n", codeName(details.Code), info.GetReason(),
		info.GetDomain(), info.GetMetadata()["http_status"])
	check(details.Code == codes.AlreadyExists, "expected ALREADY_EXISTS, got %v", err)
	check(info.GetReason() == "CONFLICT" && info.GetDomain() == "chime.amazonaws.com", "unexpected ErrorInfo %v", info)
	if details.RetryInfo != nil { // only on retryable errors (THROTTLED, UNAVAILABLE)
		fmt.Printf("retry after %s\n", details.RetryInfo.GetRetryDelay().AsDuration())
	}
	fmt.Println("go example: OK")
}
