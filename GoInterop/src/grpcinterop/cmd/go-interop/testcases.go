package main

// The interop-client mode: gRPC's standard interop test cases (grpc/grpc's
// doc/interop-test-descriptions.md), run by grpc-go against a server of grpc.testing.TestService
// (Protos/testing/test.proto).
//
//	go-interop interop-client -addr host:port -cases empty_unary,large_unary,...
//
// Prints "PASS <case>" or "FAIL <case>: <why>" for each case, in the order given, and exits 1 if
// any failed.

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testpb "grpcinterop/testing"
)

// The sizes the interop description prescribes.
const (
	largeRequestSize  = 271828
	largeResponseSize = 314159
)

var (
	// client_streaming's request payloads, which sum to 74922 bytes.
	streamingRequestSizes = []int{27182, 8, 1828, 45904}
	// server_streaming's and ping_pong's response payloads.
	streamingResponseSizes = []int{31415, 9, 2653, 58979}
)

const (
	echoInitialKey   = "x-grpc-test-echo-initial"
	echoInitialValue = "test_initial_metadata_value"
	echoTrailingKey  = "x-grpc-test-echo-trailing-bin"
	echoTrailingData = "\xab\xab\xab"
	statusMessage    = "test status message"
	specialMessage   = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
)

// interopCase runs one case on the connection; ctx bounds it.
type interopCase func(ctx context.Context, conn *grpc.ClientConn) error

var interopCases = map[string]interopCase{
	"empty_unary":                 emptyUnary,
	"large_unary":                 largeUnary,
	"client_streaming":            clientStreaming,
	"server_streaming":            serverStreaming,
	"ping_pong":                   pingPong,
	"empty_stream":                emptyStream,
	"timeout_on_sleeping_server":  timeoutOnSleepingServer,
	"cancel_after_begin":          cancelAfterBegin,
	"cancel_after_first_response": cancelAfterFirstResponse,
	"status_code_and_message":     statusCodeAndMessage,
	"special_status_message":      specialStatusMessage,
	"custom_metadata":             customMetadata,
	"unimplemented_method":        unimplementedMethod,
	"unimplemented_service":       unimplementedService,
}

func interopClient(args []string) {
	flags := flag.NewFlagSet("interop-client", flag.ExitOnError)
	addr := flags.String("addr", "", "host:port of the server")
	names := flags.String("cases", "", "comma-separated case names")
	timeout := flags.Duration("timeout", 20*time.Second, "time limit of each case")
	flags.Parse(args)
	if *addr == "" || *names == "" {
		fail("interop-client needs -addr and -cases")
	}
	var cases []string
	for _, name := range strings.Split(*names, ",") {
		if _, ok := interopCases[name]; !ok {
			fail("unknown case " + name)
		}
		cases = append(cases, name)
	}
	conn := dial(*addr)
	defer conn.Close()

	failed := 0
	for _, name := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		err := interopCases[name](ctx, conn)
		cancel()
		if err != nil {
			failed++
			fmt.Printf("FAIL %s: %s\n", name, strings.ReplaceAll(err.Error(), "\n", `\n`))
		} else {
			fmt.Printf("PASS %s\n", name)
		}
	}
	os.Stdout.Sync()
	if failed > 0 {
		os.Exit(1)
	}
}

func zeros(n int) *testpb.Payload {
	return &testpb.Payload{Body: make([]byte, n)}
}

// checkPayload says what is wrong with a response payload that should be size zero bytes.
func checkPayload(payload *testpb.Payload, size int) error {
	body := payload.GetBody()
	if len(body) != size {
		return fmt.Errorf("payload of %d bytes, want %d", len(body), size)
	}
	if !bytes.Equal(body, make([]byte, size)) {
		return errors.New("payload is not all zeros")
	}
	return nil
}

// expectStatus says what is wrong with err if it is not a status with code (and message, unless
// nil).
func expectStatus(err error, code codes.Code, message *string) error {
	if err == nil {
		return fmt.Errorf("call succeeded, want status %v", code)
	}
	got, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("error %v is not a status, want %v", err, code)
	}
	if got.Code() != code {
		return fmt.Errorf("status %v (%q), want %v", got.Code(), got.Message(), code)
	}
	if message != nil && got.Message() != *message {
		return fmt.Errorf("status message %q, want %q", got.Message(), *message)
	}
	return nil
}

func emptyUnary(ctx context.Context, conn *grpc.ClientConn) error {
	reply, err := testpb.NewTestServiceClient(conn).EmptyCall(ctx, &testpb.Empty{})
	if err != nil {
		return err
	}
	if reply == nil {
		return errors.New("no response")
	}
	return nil
}

func largeUnary(ctx context.Context, conn *grpc.ClientConn) error {
	reply, err := testpb.NewTestServiceClient(conn).UnaryCall(ctx, &testpb.SimpleRequest{
		ResponseSize: largeResponseSize,
		Payload:      zeros(largeRequestSize),
	})
	if err != nil {
		return err
	}
	return checkPayload(reply.GetPayload(), largeResponseSize)
}

func clientStreaming(ctx context.Context, conn *grpc.ClientConn) error {
	stream, err := testpb.NewTestServiceClient(conn).StreamingInputCall(ctx)
	if err != nil {
		return err
	}
	sum := 0
	for _, size := range streamingRequestSizes {
		if err := stream.Send(&testpb.StreamingInputCallRequest{Payload: zeros(size)}); err != nil {
			return fmt.Errorf("send: %v", err)
		}
		sum += size
	}
	reply, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if int(reply.GetAggregatedPayloadSize()) != sum {
		return fmt.Errorf("aggregated_payload_size %d, want %d", reply.GetAggregatedPayloadSize(), sum)
	}
	return nil
}

func serverStreaming(ctx context.Context, conn *grpc.ClientConn) error {
	request := &testpb.StreamingOutputCallRequest{}
	for _, size := range streamingResponseSizes {
		request.ResponseParameters = append(request.ResponseParameters,
			&testpb.ResponseParameters{Size: int32(size)})
	}
	stream, err := testpb.NewTestServiceClient(conn).StreamingOutputCall(ctx, request)
	if err != nil {
		return err
	}
	received := 0
	for {
		reply, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if received >= len(streamingResponseSizes) {
			return fmt.Errorf("more than %d responses", len(streamingResponseSizes))
		}
		if err := checkPayload(reply.GetPayload(), streamingResponseSizes[received]); err != nil {
			return fmt.Errorf("response %d: %v", received, err)
		}
		received++
	}
	if received != len(streamingResponseSizes) {
		return fmt.Errorf("%d responses, want %d", received, len(streamingResponseSizes))
	}
	return nil
}

func pingPong(ctx context.Context, conn *grpc.ClientConn) error {
	stream, err := testpb.NewTestServiceClient(conn).FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	for i, size := range streamingResponseSizes {
		err := stream.Send(&testpb.StreamingOutputCallRequest{
			ResponseParameters: []*testpb.ResponseParameters{{Size: int32(size)}},
			Payload:            zeros(streamingRequestSizes[i]),
		})
		if err != nil {
			return fmt.Errorf("send %d: %v", i, err)
		}
		reply, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("response %d: %v", i, err)
		}
		if err := checkPayload(reply.GetPayload(), size); err != nil {
			return fmt.Errorf("response %d: %v", i, err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if _, err := stream.Recv(); err != io.EOF {
		return fmt.Errorf("after the last response: %v, want the end of the stream", err)
	}
	return nil
}

func emptyStream(ctx context.Context, conn *grpc.ClientConn) error {
	stream, err := testpb.NewTestServiceClient(conn).FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if _, err := stream.Recv(); err != io.EOF {
		return fmt.Errorf("%v, want the end of the stream and no response", err)
	}
	return nil
}

func timeoutOnSleepingServer(ctx context.Context, conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	stream, err := testpb.NewTestServiceClient(conn).FullDuplexCall(ctx)
	if err != nil {
		// The deadline may pass before the stream is even created.
		return expectStatus(err, codes.DeadlineExceeded, nil)
	}
	err = stream.Send(&testpb.StreamingOutputCallRequest{Payload: zeros(27182)})
	if err != nil && err != io.EOF {
		return fmt.Errorf("send: %v", err)
	}
	_, err = stream.Recv()
	return expectStatus(err, codes.DeadlineExceeded, nil)
}

func cancelAfterBegin(ctx context.Context, conn *grpc.ClientConn) error {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := testpb.NewTestServiceClient(conn).StreamingInputCall(ctx)
	if err != nil {
		cancel()
		return err
	}
	cancel()
	_, err = stream.CloseAndRecv()
	return expectStatus(err, codes.Canceled, nil)
}

func cancelAfterFirstResponse(ctx context.Context, conn *grpc.ClientConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := testpb.NewTestServiceClient(conn).FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	err = stream.Send(&testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 31415}},
		Payload:            zeros(27182),
	})
	if err != nil {
		return fmt.Errorf("send: %v", err)
	}
	if _, err := stream.Recv(); err != nil {
		return fmt.Errorf("first response: %v", err)
	}
	cancel()
	_, err = stream.Recv()
	return expectStatus(err, codes.Canceled, nil)
}

// echoStatus asks UnaryCall and then FullDuplexCall to end with status 2 and message.
func echoStatus(ctx context.Context, conn *grpc.ClientConn, message string, duplex bool) error {
	client := testpb.NewTestServiceClient(conn)
	want := &testpb.EchoStatus{Code: int32(codes.Unknown), Message: message}
	_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: want})
	if err := expectStatus(err, codes.Unknown, &message); err != nil {
		return fmt.Errorf("UnaryCall: %v", err)
	}
	if !duplex {
		return nil
	}
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&testpb.StreamingOutputCallRequest{ResponseStatus: want}); err != nil {
		return fmt.Errorf("send: %v", err)
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	_, err = stream.Recv()
	if err := expectStatus(err, codes.Unknown, &message); err != nil {
		return fmt.Errorf("FullDuplexCall: %v", err)
	}
	return nil
}

func statusCodeAndMessage(ctx context.Context, conn *grpc.ClientConn) error {
	return echoStatus(ctx, conn, statusMessage, true)
}

func specialStatusMessage(ctx context.Context, conn *grpc.ClientConn) error {
	return echoStatus(ctx, conn, specialMessage, false)
}

// checkEchoedMetadata says what is wrong with the initial and trailing metadata of a call whose
// request carried the echo keys.
func checkEchoedMetadata(header, trailer metadata.MD) error {
	if got := header.Get(echoInitialKey); len(got) != 1 || got[0] != echoInitialValue {
		return fmt.Errorf("initial metadata %s = %q, want [%q]", echoInitialKey, got, echoInitialValue)
	}
	if got := trailer.Get(echoTrailingKey); len(got) != 1 || got[0] != echoTrailingData {
		return fmt.Errorf("trailing metadata %s = %q, want [%q]", echoTrailingKey, got, echoTrailingData)
	}
	return nil
}

func customMetadata(ctx context.Context, conn *grpc.ClientConn) error {
	ctx = metadata.AppendToOutgoingContext(ctx,
		echoInitialKey, echoInitialValue, echoTrailingKey, echoTrailingData)
	client := testpb.NewTestServiceClient(conn)

	var header, trailer metadata.MD
	reply, err := client.UnaryCall(ctx, &testpb.SimpleRequest{
		ResponseSize: largeResponseSize,
		Payload:      zeros(largeRequestSize),
	}, grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		return fmt.Errorf("UnaryCall: %v", err)
	}
	if err := checkPayload(reply.GetPayload(), largeResponseSize); err != nil {
		return fmt.Errorf("UnaryCall: %v", err)
	}
	if err := checkEchoedMetadata(header, trailer); err != nil {
		return fmt.Errorf("UnaryCall: %v", err)
	}

	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	err = stream.Send(&testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: largeResponseSize}},
		Payload:            zeros(largeRequestSize),
	})
	if err != nil {
		return fmt.Errorf("send: %v", err)
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	header, err = stream.Header()
	if err != nil {
		return fmt.Errorf("FullDuplexCall headers: %v", err)
	}
	responses := 0
	for {
		reply, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("FullDuplexCall: %v", err)
		}
		if err := checkPayload(reply.GetPayload(), largeResponseSize); err != nil {
			return fmt.Errorf("FullDuplexCall: %v", err)
		}
		responses++
	}
	if responses != 1 {
		return fmt.Errorf("FullDuplexCall: %d responses, want 1", responses)
	}
	if err := checkEchoedMetadata(header, stream.Trailer()); err != nil {
		return fmt.Errorf("FullDuplexCall: %v", err)
	}
	return nil
}

func unimplementedMethod(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := testpb.NewTestServiceClient(conn).UnimplementedCall(ctx, &testpb.Empty{})
	return expectStatus(err, codes.Unimplemented, nil)
}

func unimplementedService(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := testpb.NewUnimplementedServiceClient(conn).UnimplementedCall(ctx, &testpb.Empty{})
	return expectStatus(err, codes.Unimplemented, nil)
}

// testService is grpc-go's side of grpc.testing.TestService, as the interop description's server
// features ask (served by "serve" so the clients' cases can be checked against grpc-go too).
// UnimplementedCall stays unimplemented.
type testService struct {
	testpb.UnimplementedTestServiceServer
}

// echoMetadata sends back the echo keys of the call's request metadata: the initial one at once,
// the trailing one with the status.
func echoMetadata(ctx context.Context) {
	incoming, _ := metadata.FromIncomingContext(ctx)
	if values := incoming.Get(echoInitialKey); len(values) > 0 {
		grpc.SetHeader(ctx, metadata.Pairs(echoInitialKey, values[0]))
	}
	if values := incoming.Get(echoTrailingKey); len(values) > 0 {
		grpc.SetTrailer(ctx, metadata.Pairs(echoTrailingKey, values[0]))
	}
}

func requestedStatus(echo *testpb.EchoStatus) error {
	if echo == nil || echo.Code == 0 {
		return nil
	}
	return status.Error(codes.Code(echo.Code), echo.Message)
}

func (s *testService) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	echoMetadata(ctx)
	return &testpb.Empty{}, nil
}

func (s *testService) UnaryCall(ctx context.Context, request *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	echoMetadata(ctx)
	if err := requestedStatus(request.ResponseStatus); err != nil {
		return nil, err
	}
	return &testpb.SimpleResponse{Payload: zeros(int(request.ResponseSize))}, nil
}

// sendResponses sends one response per parameter, after its interval.
func sendResponses(ctx context.Context, parameters []*testpb.ResponseParameters, send func(*testpb.StreamingOutputCallResponse) error) error {
	for _, parameter := range parameters {
		if parameter.IntervalUs > 0 {
			select {
			case <-time.After(time.Duration(parameter.IntervalUs) * time.Microsecond):
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
		}
		if err := send(&testpb.StreamingOutputCallResponse{Payload: zeros(int(parameter.Size))}); err != nil {
			return err
		}
	}
	return nil
}

func (s *testService) StreamingOutputCall(request *testpb.StreamingOutputCallRequest, stream testpb.TestService_StreamingOutputCallServer) error {
	echoMetadata(stream.Context())
	if err := sendResponses(stream.Context(), request.ResponseParameters, stream.Send); err != nil {
		return err
	}
	return requestedStatus(request.ResponseStatus)
}

func (s *testService) StreamingInputCall(stream testpb.TestService_StreamingInputCallServer) error {
	echoMetadata(stream.Context())
	sum := 0
	for {
		request, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(sum)})
		}
		if err != nil {
			return err
		}
		sum += len(request.GetPayload().GetBody())
	}
}

func (s *testService) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	echoMetadata(stream.Context())
	for {
		request, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := requestedStatus(request.ResponseStatus); err != nil {
			return err
		}
		if err := sendResponses(stream.Context(), request.ResponseParameters, stream.Send); err != nil {
			return err
		}
	}
}

func (s *testService) HalfDuplexCall(stream testpb.TestService_HalfDuplexCallServer) error {
	echoMetadata(stream.Context())
	var requests []*testpb.StreamingOutputCallRequest
	for {
		request, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		requests = append(requests, request)
	}
	for _, request := range requests {
		if err := requestedStatus(request.ResponseStatus); err != nil {
			return err
		}
		if err := sendResponses(stream.Context(), request.ResponseParameters, stream.Send); err != nil {
			return err
		}
	}
	return nil
}
