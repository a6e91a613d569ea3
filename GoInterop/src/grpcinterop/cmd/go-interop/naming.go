package main

// The naming-call mode: grpc-go dialling through etcd's own resolver
// (go.etcd.io/etcd/clientv3/naming/resolver), which reads the values the registry writes with
// its etcd-naming codec.
//
//	go-interop naming-call -etcd 127.0.0.1:2379 -target /micro/user-server [-calls 20] [-balancer round_robin]
//
// dials etcd:///<target> with the balancer (round_robin or pick_first; the resolver watches the
// keys under <target>) and prints "READY". Then it reads commands from stdin, one a line,
// numbering them from 1:
//
//	call [N]  calls user.UserMesService/GetById N times (default -calls), one at a time, and
//	          prints "ROUND <k>\t<answering addresses, sorted, comma-separated>\t<failed calls>\t<first error>"
//	list      prints "LIST <k>\t<JSON>": the endpoints under <target> as etcd's endpoints manager
//	          decodes them, [{"Key":…,"Addr":…,"Metadata":…}] sorted by key
//
// It exits when stdin closes: `echo call | go-interop naming-call …` makes one round.
//
// With grpc-go 1.33 (Debian's), round_robin panics ("hash of unhashable type
// map[string]interface {}") as soon as the resolver hands it an address whose value has a JSON
// object as its Metadata: etcd's resolver copies Metadata into resolver.Address.Metadata, and
// round_robin's base balancer keys a Go map by resolver.Address. pick_first compares addresses
// with reflect.DeepEqual and works. (etcd-io/etcd#19700, grpc/grpc-go#8225.)

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/naming/endpoints"
	"go.etcd.io/etcd/clientv3/naming/resolver"
	"go.etcd.io/etcd/pkg/logutil"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"grpcinterop/user"
)

func namingCall(args []string) {
	flags := flag.NewFlagSet("naming-call", flag.ExitOnError)
	etcd := flags.String("etcd", "", "etcd endpoint, host:port")
	target := flags.String("target", "", "the service's key prefix, such as /micro/user-server")
	calls := flags.Int("calls", 20, "calls of a round when `call` gives no count")
	balancer := flags.String("balancer", "round_robin", "round_robin or pick_first")
	flags.Parse(args)
	if *etcd == "" || *target == "" || *calls < 1 {
		fail("naming-call needs -etcd, -target and -calls >= 1")
	}
	if *balancer != "round_robin" && *balancer != "pick_first" {
		fail("naming-call -balancer takes round_robin or pick_first, not " + *balancer)
	}

	logConfig := logutil.DefaultZapLoggerConfig
	logConfig.Level = zap.NewAtomicLevelAt(zap.WarnLevel)
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{*etcd},
		DialTimeout: 10 * time.Second,
		LogConfig:   &logConfig,
	})
	if err != nil {
		fail("etcd client: " + err.Error())
	}
	defer client.Close()
	builder, err := resolver.NewBuilder(client)
	if err != nil {
		fail("resolver: " + err.Error())
	}
	conn, err := grpc.Dial(
		"etcd:///"+*target,
		grpc.WithResolvers(builder),
		grpc.WithInsecure(),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"`+*balancer+`":{}}]}`),
	)
	if err != nil {
		fail("dial etcd:///" + *target + ": " + err.Error())
	}
	defer conn.Close()
	users := user.NewUserMesServiceClient(conn)
	manager, err := endpoints.NewManager(client, *target)
	if err != nil {
		fail("endpoints manager: " + err.Error())
	}

	fmt.Println("READY")
	os.Stdout.Sync()
	scanner := bufio.NewScanner(os.Stdin)
	round := 0
	for scanner.Scan() {
		command := strings.Fields(scanner.Text())
		if len(command) == 0 {
			continue
		}
		round++
		switch command[0] {
		case "call":
			n := *calls
			if len(command) > 1 {
				if n, err = strconv.Atoi(command[1]); err != nil || n < 1 {
					fail("call takes a count >= 1, not " + command[1])
				}
			}
			fmt.Println(callRound(users, round, n))
		case "list":
			fmt.Println(listEndpoints(manager, round))
		default:
			fail("unknown command " + command[0] + "; use call or list")
		}
		os.Stdout.Sync()
	}
}

func callRound(users user.UserMesServiceClient, round, calls int) string {
	answered := map[string]bool{}
	failed := 0
	firstError := ""
	for i := 1; i <= calls; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		response, err := users.GetById(ctx, &user.GetByIdReq{Id: int64(i)})
		cancel()
		if err != nil {
			failed++
			if firstError == "" {
				firstError = strings.ReplaceAll(err.Error(), "\t", " ")
			}
			continue
		}
		answered[response.GetUser().GetName()] = true
	}
	addresses := make([]string, 0, len(answered))
	for address := range answered {
		addresses = append(addresses, address)
	}
	sort.Strings(addresses)
	return fmt.Sprintf("ROUND %d\t%s\t%d\t%s", round, strings.Join(addresses, ","), failed, firstError)
}

type listedEndpoint struct {
	Key      string
	Addr     string
	Metadata interface{}
}

func listEndpoints(manager endpoints.Manager, round int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	listed, err := manager.List(ctx)
	if err != nil {
		fail("list: " + err.Error())
	}
	result := make([]listedEndpoint, 0, len(listed))
	for key, endpoint := range listed {
		result = append(result, listedEndpoint{Key: key, Addr: endpoint.Addr, Metadata: endpoint.Metadata})
	}
	sort.Slice(result, func(i, j int) bool { return result[i].Key < result[j].Key })
	encoded, err := json.Marshal(result)
	if err != nil {
		fail("list: " + err.Error())
	}
	return fmt.Sprintf("LIST %d\t%s", round, encoded)
}
