// Command healthprobe calls grpc.health.v1.Health/Check on a registrar's gRPC server and exits 0
// when it answers SERVING. It dials loopback addresses only: the registered (advertised)
// address may belong to nothing on this machine and is never a target.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	addr := flag.String("addr", "", "loopback host:port of the server (the registrar's 'serving on' address)")
	service := flag.String("service", "", "service name to check (empty: the server as a whole)")
	flag.Parse()
	log.SetFlags(0)
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		log.Fatalf("--addr %q: %v", *addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		log.Fatalf("--addr %q: only loopback addresses are probed", *addr)
	}
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("dial %s: %v", *addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: *service})
	if err != nil {
		log.Fatalf("health check of %s: %v", *addr, err)
	}
	fmt.Println(resp.GetStatus())
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		os.Exit(1)
	}
}
