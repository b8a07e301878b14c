// Command healthclient is a gRPC client as a user would write one: it dials a target with
// grpc-go's own name resolution (e.g. dns:///NAME.NS.svc.cluster.local:PORT, through the
// system's resolv.conf and so, in a pod, through cluster DNS) and calls grpc.health.v1
// Health/Check. Built with CGO_ENABLED=0 it is static (Go's own DNS resolver), for a busybox
// image.
//
// One call (the default): prints "resolved HOST: [ADDRS]" (what the name resolves to, looked up
// the way grpc-go's dns resolver looks it up), then "STATUS from PEER" (PEER: the address the
// connection went to, a ClusterIP or the endpoint itself); exits 0 when the answer is SERVING.
//
// Watching (-wait EVENT,...): prints "watching", then tries every -every until each event holds in
// turn, printing "EVENT at UNIX_NANOS after N attempts: DETAIL" for each; exits 0 once the last one
// held, 1 after -timeout. The time is the machine's wall clock, which a pod shares with the host,
// so a test on the host subtracts the time it wrote to etcd. Events:
//
//	resolved    the target's host resolves (to -expect, if given)
//	unresolved  the target's host does not resolve (no such host)
//	serving     a Check on a new connection answers SERVING
//	failing     a Check on a new connection fails
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

func main() {
	target := flag.String("target", "", "gRPC target, e.g. dns:///greeter.default.svc.cluster.local:50051 or 10.0.0.7:50051")
	service := flag.String("service", "", "service name to check (empty: the server as a whole)")
	wait := flag.String("wait", "", "events to wait for in turn: resolved, unresolved, serving, failing (comma-separated); empty: one call")
	expect := flag.String("expect", "", "with -wait resolved: the address the name must resolve to")
	every := flag.Duration("every", 20*time.Millisecond, "with -wait: time between attempts")
	attempt := flag.Duration("attempt", 500*time.Millisecond, "deadline of one Check")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	verbose := flag.Bool("v", false, "with -wait: print every attempt that did not see the event")
	flag.Parse()
	log.SetFlags(0)
	if *target == "" {
		log.Fatal("-target is required")
	}
	host, err := targetHost(*target)
	if err != nil {
		log.Fatalf("-target %q: %v", *target, err)
	}
	if *wait == "" {
		os.Exit(once(*target, host, *service, *attempt))
	}
	events := strings.Split(*wait, ",")
	for _, e := range events {
		if !slices.Contains([]string{"resolved", "unresolved", "serving", "failing"}, e) {
			log.Fatalf("-wait: unknown event %q", e)
		}
	}
	fmt.Println("watching")
	deadline := time.Now().Add(*timeout)
	for _, event := range events {
		for n := 1; ; n++ {
			held, detail := check(event, *target, host, *service, *expect, *attempt)
			if held {
				fmt.Printf("%s at %d after %d attempts: %s\n", event, time.Now().UnixNano(), n, detail)
				break
			}
			if *verbose {
				fmt.Printf("attempt %d at %d: %s\n", n, time.Now().UnixNano(), detail)
			}
			if time.Now().After(deadline) {
				fmt.Printf("timeout waiting for %s after %d attempts: %s\n", event, n, detail)
				os.Exit(1)
			}
			time.Sleep(*every)
		}
	}
}

// targetHost is the host part of a target: what its dns resolver looks up.
func targetHost(target string) (string, error) {
	endpoint := target
	if i := strings.Index(target, ":///"); i >= 0 {
		endpoint = target[i+4:]
	}
	host, _, err := net.SplitHostPort(endpoint)
	return host, err
}

// lookup resolves host as grpc-go's dns resolver does (net.DefaultResolver.LookupHost).
func lookup(host string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return net.DefaultResolver.LookupHost(ctx, host)
}

// call makes one Check on a new connection: the status and the address the connection went to.
func call(target, service string, deadline time.Duration) (healthpb.HealthCheckResponse_ServingStatus, string, error) {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	var p peer.Peer
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service}, grpc.Peer(&p))
	if err != nil {
		return 0, "", err
	}
	from := ""
	if p.Addr != nil {
		from = p.Addr.String()
	}
	return resp.GetStatus(), from, nil
}

func once(target, host, service string, deadline time.Duration) int {
	addrs, err := lookup(host)
	if err != nil {
		fmt.Printf("resolved %s: error: %v\n", host, err)
	} else {
		fmt.Printf("resolved %s: %v\n", host, addrs)
	}
	status, from, err := call(target, service, deadline)
	if err != nil {
		fmt.Printf("call failed: %v\n", err)
		return 1
	}
	fmt.Printf("%s from %s\n", status, from)
	if status != healthpb.HealthCheckResponse_SERVING {
		return 1
	}
	return 0
}

// check says whether event holds now, and what was seen.
func check(event, target, host, service, expect string, deadline time.Duration) (bool, string) {
	switch event {
	case "resolved", "unresolved":
		addrs, err := lookup(host)
		var dnsErr *net.DNSError
		notFound := errors.As(err, &dnsErr) && dnsErr.IsNotFound
		if event == "unresolved" {
			return notFound, fmt.Sprintf("%v %v", addrs, err)
		}
		ok := err == nil && len(addrs) > 0 && (expect == "" || slices.Contains(addrs, expect))
		return ok, fmt.Sprintf("%v %v", addrs, err)
	default:
		status, from, err := call(target, service, deadline)
		serving := err == nil && status == healthpb.HealthCheckResponse_SERVING
		detail := fmt.Sprintf("%s from %s", status, from)
		if err != nil {
			detail = err.Error()
		}
		if event == "serving" {
			return serving, detail
		}
		return !serving, detail
	}
}
