// Package registrar holds what the per-framework registrars share: the common flags, a grpc-go
// server with the standard health service, and the checks that the framework's key really is
// in etcd (and really gone after deregistering).
//
// Every registrar speaks the same small protocol on stdout, one line each, so a test can wait
// for them:
//
//	serving on ADDR     the gRPC server listens on ADDR (loopback in tests)
//	registered KEY      the framework's own code wrote KEY to etcd, and it is there
//	deregistered KEY    after SIGTERM/SIGINT: the framework removed KEY, and it is gone
//
// Logs go to stderr. The registrars only listen and write to etcd: they never dial the
// advertised address, which may belong to nothing on this machine.
package registrar

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Flags common to every registrar. Zero values mean "the framework's default".
type Flags struct {
	Endpoints string
	Name      string
	Version   string
	Listen    string
	Advertise string
	Weight    int
	ID        string
}

// CommonFlags registers the shared flags on the default flag set; call flag.Parse after adding
// the registrar's own.
func CommonFlags() *Flags {
	f := &Flags{}
	flag.StringVar(&f.Endpoints, "endpoints", "http://127.0.0.1:2379", "etcd client URLs, comma-separated")
	flag.StringVar(&f.Name, "name", "", "service name (required)")
	flag.StringVar(&f.Version, "version", "", "service version (empty: the framework's default, if it has versions)")
	flag.StringVar(&f.Listen, "listen", "127.0.0.1:0", "address the gRPC server listens on")
	flag.StringVar(&f.Advertise, "advertise", "", "address registered in etcd (default: the listen address); never dialed")
	flag.IntVar(&f.Weight, "weight", 0, "weight to register (0: none, or the framework's default)")
	flag.StringVar(&f.ID, "id", "", "instance id (empty: the framework's default)")
	log.SetFlags(log.Lmicroseconds)
	log.SetOutput(os.Stderr)
	return f
}

// Check validates the common flags after flag.Parse.
func (f *Flags) Check() {
	if f.Name == "" {
		log.Fatal("--name is required")
	}
}

// EndpointList is --endpoints split on commas.
func (f *Flags) EndpointList() []string {
	var out []string
	for _, e := range strings.Split(f.Endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// HostPorts is --endpoints without URL schemes, for registries that take host:port.
func (f *Flags) HostPorts() []string {
	var out []string
	for _, e := range f.EndpointList() {
		e = strings.TrimPrefix(strings.TrimPrefix(e, "http://"), "https://")
		out = append(out, strings.TrimSuffix(e, "/"))
	}
	return out
}

// Ignored says on stderr which common flags a format has no place for.
func (f *Flags) Ignored(format string, version, weight bool) {
	if version && f.Version != "" {
		log.Printf("%s: the format carries no version; --version=%s is ignored", format, f.Version)
	}
	if weight && f.Weight != 0 {
		log.Printf("%s: the format carries no weight; --weight=%d is ignored", format, f.Weight)
	}
}

// NewHealthServer is a grpc-go server serving the standard grpc.health.v1 service, SERVING for
// the empty service name and for name.
func NewHealthServer(name string) *grpc.Server {
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	return srv
}

// Serve listens on listen, serves srv there in the background and says "serving on ADDR".
func Serve(srv *grpc.Server, listen string) net.Addr {
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		log.Fatalf("listen on %s: %v", listen, err)
	}
	go func() {
		if err := srv.Serve(lis); err != nil {
			log.Printf("grpc serve: %v", err)
		}
	}()
	Serving(lis.Addr().String())
	return lis.Addr()
}

// Serving prints the "serving on" line.
func Serving(addr string) { fmt.Printf("serving on %s\n", addr) }

// Client is a plain etcd client, used only to check what the framework wrote.
func Client(f *Flags) *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: f.EndpointList(), DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatalf("etcd client for %s: %v", f.Endpoints, err)
	}
	return cli
}

// WaitKey waits until key is present (present=true) or absent in etcd, for at most timeout.
func WaitKey(cli *clientv3.Client, key string, present bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := cli.Get(ctx, key, clientv3.WithCountOnly())
		cancel()
		if err == nil && (resp.Count > 0) == present {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("etcd get %s: %w", key, err)
			}
			return fmt.Errorf("key %s still %s after %v", key, map[bool]string{true: "absent", false: "present"}[present], timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Registered checks that key is in etcd and prints the "registered" line.
func Registered(cli *clientv3.Client, key string) {
	if err := WaitKey(cli, key, true, 10*time.Second); err != nil {
		log.Fatalf("the framework did not register: %v", err)
	}
	fmt.Printf("registered %s\n", key)
}

// Deregistered checks that key is gone from etcd, prints the "deregistered" line and exits 0.
func Deregistered(cli *clientv3.Client, key string) {
	if err := WaitKey(cli, key, false, 10*time.Second); err != nil {
		log.Fatalf("the framework did not deregister: %v", err)
	}
	fmt.Printf("deregistered %s\n", key)
	os.Exit(0)
}

// Signals is notified of SIGTERM and SIGINT.
func Signals() <-chan os.Signal {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	return c
}

// AdvertiseOr is --advertise, or addr when it is empty.
func (f *Flags) AdvertiseOr(addr string) string {
	if f.Advertise != "" {
		return f.Advertise
	}
	return addr
}
