// Command gomicro runs a go-micro v5 gRPC server (go-micro.dev/v5/server/grpc) around an injected
// grpc-go server that serves the standard health service, registered by go-micro's own etcd
// registry (go-micro.dev/v5/registry/etcd). The server registers itself on Start, re-registers
// every --interval (go-micro's RegisterInterval, 30s) under a --ttl lease (RegisterTTL, 90s) and
// deregisters (deletes its key) on Stop.
//
// The key is "/micro/registry/{name}/{name}-{id}" (id a UUID unless --id); the value is the JSON
// of registry.Service holding this one node: {name,version,metadata,endpoints,nodes:[{metadata,
// id,address}]}. --advertise is go-micro's own Advertise option. --weight goes into the node
// metadata as "weight" (go-micro has no weight of its own). --version empty keeps go-micro's
// default, "latest".
//
// go-micro v5.30.0's server/grpc replaces grpc's global "proto" codec, at init, with one that
// accepts only protobuf-v2 messages; the etcd client's requests (gogo-generated, v1 messages)
// then fail with "grpc: error while marshaling: invalid message" and the registry cannot reach
// etcd. main restores a codec that takes both (as grpc's own does) before anything starts.
package main

import (
	"errors"
	"flag"
	"log"
	"strconv"
	"strings"
	"time"

	"etcd-bridge.io/tests/frameworks/internal/registrar"
	"go-micro.dev/v5/codec/bytes"
	"go-micro.dev/v5/registry"
	etcdreg "go-micro.dev/v5/registry/etcd"
	"go-micro.dev/v5/server"
	mgrpc "go-micro.dev/v5/server/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
)

func main() {
	encoding.RegisterCodec(protoCodec{})
	f := registrar.CommonFlags()
	ttl := flag.Duration("ttl", 90*time.Second, "go-micro RegisterTTL")
	interval := flag.Duration("interval", 30*time.Second, "go-micro RegisterInterval")
	flag.Parse()
	f.Check()

	// go-micro's etcd registry takes host:port, not URLs.
	reg := etcdreg.NewEtcdRegistry(registry.Addrs(f.HostPorts()...), registry.Timeout(5*time.Second))

	md := map[string]string{}
	if f.Weight != 0 {
		md["weight"] = strconv.Itoa(f.Weight)
	}
	opts := []server.Option{
		server.Name(f.Name),
		server.Address(f.Listen),
		server.Metadata(md),
		server.Registry(reg),
		server.RegisterTTL(*ttl),
		server.RegisterInterval(*interval),
		mgrpc.Server(registrar.NewHealthServer(f.Name)),
	}
	if f.Version != "" {
		opts = append(opts, server.Version(f.Version))
	}
	if f.Advertise != "" {
		opts = append(opts, server.Advertise(f.Advertise))
	}
	if f.ID != "" {
		opts = append(opts, server.Id(f.ID))
	}
	srv := mgrpc.NewServer(opts...)
	if err := srv.Start(); err != nil {
		log.Fatalf("go-micro grpc server: %v", err)
	}
	o := srv.Options()
	registrar.Serving(o.Address)

	// The key as go-micro's etcd registry builds it (nodePath, private): "/" in names becomes "-".
	key := "/micro/registry/" + strings.ReplaceAll(o.Name, "/", "-") + "/" + strings.ReplaceAll(o.Name+"-"+o.Id, "/", "-")
	cli := registrar.Client(f)
	registrar.Registered(cli, key)

	<-registrar.Signals()
	if err := srv.Stop(); err != nil {
		log.Printf("go-micro stop: %v", err)
	}
	registrar.Deregistered(cli, key)
}

// protoCodec is grpc's "proto" codec as grpc has it (v1 and v2 messages), plus go-micro's raw
// bytes.Frame, which go-micro's own codec also passes through.
type protoCodec struct{}

func (protoCodec) Name() string { return "proto" }

func (protoCodec) Marshal(v any) ([]byte, error) {
	if f, ok := v.(*bytes.Frame); ok {
		return f.Data, nil
	}
	m := messageV2(v)
	if m == nil {
		return nil, errors.New("proto codec: not a protobuf message")
	}
	return proto.Marshal(m)
}

func (protoCodec) Unmarshal(data []byte, v any) error {
	if f, ok := v.(*bytes.Frame); ok {
		f.Data = data
		return nil
	}
	m := messageV2(v)
	if m == nil {
		return errors.New("proto codec: not a protobuf message")
	}
	return proto.Unmarshal(data, m)
}

func messageV2(v any) proto.Message {
	switch m := v.(type) {
	case proto.Message:
		return m
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(m)
	}
	return nil
}
