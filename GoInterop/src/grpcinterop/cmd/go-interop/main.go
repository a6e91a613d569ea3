// Command go-interop is the grpc-go side of the project's interop tests and benchmarks.
//
// It is built from Debian's Go packages in GOPATH mode (see GoInterop/README.md) and keeps
// grpc-go's defaults, BDP estimator included: its pings are what the interop tests are about.
//
//	go-interop serve [-addr 127.0.0.1:0]
//	    Serves user.UserMesService, interop.InteropTest and grpc.testing.TestService; prints
//	    "LISTENING host:port" on stdout and stops when stdin closes or on SIGTERM/SIGINT.
//	go-interop bench -target host:port -calls N -concurrency C
//	    Calls GetById N times from C goroutines over one connection; prints one JSON line.
//	go-interop reconnect -target host:port -calls N [-stream M] [-concurrency C]
//	    Calls GetById N times, one at a time (or from C goroutines), and counts failed calls
//	    and reconnects; prints one JSON line. With -stream M, each call is instead a List
//	    streaming M messages back, all of which are read.
//	go-interop json
//	    Reads instances from stdin and compares Go's encoding/json with the registry's codecs
//	    both ways (see codec.go).
//	go-interop naming-call -etcd host:port -target /prefix/service [-calls N]
//	    Dials etcd:///<target> through etcd's grpc-go resolver with round_robin and calls
//	    GetById on commands from stdin (see naming.go).
//	go-interop interop-client -addr host:port -cases a,b,c [-timeout 20s]
//	    Runs gRPC's standard interop test cases against a grpc.testing.TestService server;
//	    prints "PASS <case>" or "FAIL <case>: <why>" for each and exits 1 if any failed (see
//	    testcases.go).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"grpcinterop/interop"
	testpb "grpcinterop/testing"
	"grpcinterop/user"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: go-interop serve|bench|reconnect|json|naming-call|interop-client [flags]")
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "bench":
		bench(os.Args[2:])
	case "reconnect":
		reconnect(os.Args[2:])
	case "json":
		codecMode(os.Args[2:])
	case "naming-call":
		namingCall(os.Args[2:])
	case "interop-client":
		interopClient(os.Args[2:])
	default:
		fail("unknown mode " + os.Args[1] +
			"; use serve, bench, reconnect, json, naming-call or interop-client")
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "go-interop:", message)
	os.Exit(2)
}

// userService answers GetById with a user named after the server's own address.
type userService struct {
	user.UnimplementedUserMesServiceServer
	address string
}

func (s *userService) GetById(ctx context.Context, req *user.GetByIdReq) (*user.GetByIDResp, error) {
	return &user.GetByIDResp{User: &user.User{Id: req.Id, Name: s.address}}, nil
}

// interopService implements the test-only methods of Protos/interop/interop.proto.
type interopService struct {
	interop.UnimplementedInteropTestServer
	address string
}

func (s *interopService) Slow(ctx context.Context, req *user.GetByIdReq) (*user.GetByIDResp, error) {
	select {
	case <-time.After(time.Duration(req.Id) * time.Millisecond):
		return &user.GetByIDResp{User: &user.User{Id: req.Id, Name: s.address}}, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (s *interopService) Echo(ctx context.Context, req *user.User) (*user.User, error) {
	return req, nil
}

func (s *interopService) Fail(ctx context.Context, req *user.GetByIdReq) (*user.GetByIDResp, error) {
	if req.Id == 0 {
		return &user.GetByIDResp{User: &user.User{Name: s.address}}, nil
	}
	return nil, status.Error(codes.Code(req.Id), "requested failure")
}

func (s *interopService) List(req *user.GetByIdReq, stream interop.InteropTest_ListServer) error {
	for i := int64(1); i <= req.Id; i++ {
		if err := stream.Send(&user.User{Id: i, Name: s.address}); err != nil {
			return err
		}
	}
	return nil
}

func (s *interopService) Collect(stream interop.InteropTest_CollectServer) error {
	var names []string
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		names = append(names, m.Name)
	}
	return stream.SendAndClose(&user.GetByIDResp{
		User: &user.User{Id: int64(len(names)), Name: strings.Join(names, ",")},
	})
}

func (s *interopService) Chat(stream interop.InteropTest_ChatServer) error {
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(m); err != nil {
			return err
		}
	}
}

func serve(args []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := flags.String("addr", "127.0.0.1:0", "address to listen on")
	flags.Parse(args)

	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		fail(err.Error())
	}
	address := listener.Addr().String()
	server := grpc.NewServer()
	user.RegisterUserMesServiceServer(server, &userService{address: address})
	interop.RegisterInteropTestServer(server, &interopService{address: address})
	testpb.RegisterTestServiceServer(server, &testService{})

	// The parent holds our stdin open; when it goes away (even by a crash), so do we.
	go func() {
		io.Copy(io.Discard, os.Stdin)
		server.Stop()
	}()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		server.Stop()
	}()

	fmt.Printf("LISTENING %s\n", address)
	os.Stdout.Sync()
	if err := server.Serve(listener); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		fail(err.Error())
	}
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

func dial(target string) *grpc.ClientConn {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		fail("dial " + target + ": " + err.Error())
	}
	return conn
}

func percentile(sorted []time.Duration, fraction float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(fraction*float64(len(sorted)) + 0.999999)
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return float64(sorted[rank-1].Nanoseconds()) / 1e6
}

func bench(args []string) {
	flags := flag.NewFlagSet("bench", flag.ExitOnError)
	target := flags.String("target", "", "host:port of the server")
	calls := flags.Int("calls", 10000, "number of calls")
	concurrency := flags.Int("concurrency", 1, "concurrent callers")
	flags.Parse(args)
	if *target == "" || *calls < 1 || *concurrency < 1 {
		fail("bench needs -target, -calls >= 1 and -concurrency >= 1")
	}
	conn := dial(*target)
	defer conn.Close()
	client := user.NewUserMesServiceClient(conn)

	// One warm-up call, so connection set-up is not measured.
	if _, err := client.GetById(context.Background(), &user.GetByIdReq{Id: 1}); err != nil {
		fail("warm-up call: " + err.Error())
	}

	var next, failures int64
	latencies := make([][]time.Duration, *concurrency)
	var wg sync.WaitGroup
	cpuStart := cpuSeconds()
	start := time.Now()
	for c := 0; c < *concurrency; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for {
				n := atomic.AddInt64(&next, 1)
				if n > int64(*calls) {
					return
				}
				callStart := time.Now()
				_, err := client.GetById(context.Background(), &user.GetByIdReq{Id: n})
				latencies[c] = append(latencies[c], time.Since(callStart))
				if err != nil {
					atomic.AddInt64(&failures, 1)
				}
			}
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	cpu := cpuSeconds() - cpuStart
	var all []time.Duration
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	out, _ := json.Marshal(map[string]interface{}{
		"calls":       *calls,
		"failures":    failures,
		"seconds":     elapsed,
		"calls_per_s": float64(*calls) / elapsed,
		"p50_ms":      percentile(all, 0.5),
		"p99_ms":      percentile(all, 0.99),
		"cpu_s":       cpu,
	})
	fmt.Println(string(out))
}

func reconnect(args []string) {
	flags := flag.NewFlagSet("reconnect", flag.ExitOnError)
	target := flags.String("target", "", "host:port of the server")
	calls := flags.Int("calls", 2000, "number of calls")
	streamed := flags.Int("stream", 0, "messages per call of a server-streaming List (0: unary GetById)")
	concurrency := flags.Int("concurrency", 1, "concurrent callers")
	flags.Parse(args)
	if *target == "" || *calls < 1 || *streamed < 0 || *concurrency < 1 {
		fail("reconnect needs -target, -calls >= 1, -stream >= 0 and -concurrency >= 1")
	}
	conn := dial(*target)
	defer conn.Close()
	client := user.NewUserMesServiceClient(conn)
	lists := interop.NewInteropTestClient(conn)
	call := func(ctx context.Context, i int) error {
		if *streamed == 0 {
			_, err := client.GetById(ctx, &user.GetByIdReq{Id: int64(i)})
			return err
		}
		stream, err := lists.List(ctx, &user.GetByIdReq{Id: int64(*streamed)})
		if err != nil {
			return err
		}
		received := 0
		for {
			_, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			received++
		}
		if received != *streamed {
			return fmt.Errorf("List streamed %d messages, want %d", received, *streamed)
		}
		return nil
	}

	// Counts every time the connection leaves READY (a GOAWAY or a reset connection).
	var dropped int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		state := conn.GetState()
		for {
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				select {
				case <-stop:
				case <-ctx.Done():
				}
				cancel()
			}()
			changed := conn.WaitForStateChange(ctx, state)
			cancel()
			if !changed {
				return
			}
			next := conn.GetState()
			if state == connectivity.Ready && next != connectivity.Ready {
				atomic.AddInt64(&dropped, 1)
			}
			state = next
		}
	}()

	var mutex sync.Mutex
	failures := 0
	firstFailure := 0
	var messages []string
	var next int64
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < *concurrency; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i > *calls {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := call(ctx, i)
				cancel()
				if err != nil {
					mutex.Lock()
					failures++
					if firstFailure == 0 {
						firstFailure = i
					}
					if len(messages) < 3 {
						messages = append(messages, err.Error())
					}
					mutex.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	close(stop)
	<-done
	out, _ := json.Marshal(map[string]interface{}{
		"calls":              *calls,
		"failures":           failures,
		"first_failure_call": firstFailure,
		"connection_drops":   atomic.LoadInt64(&dropped),
		"seconds":            elapsed,
		"errors":             messages,
	})
	fmt.Println(string(out))
}
