#!/usr/bin/env python3
"""Writes the format fixtures for capture.sh.

  fixtures.py good DUMP.json OUT.json [TOKEN=STANDIN ...]
      DUMP is `etcdctl get "" --prefix -w json`; OUT gets [{"key","value","lease"}] sorted by
      key, with each random TOKEN replaced by its STANDIN in keys and values.
  fixtures.py bad GOOD.json OUT.json FORMAT
      OUT gets bad input of FORMAT derived from the captured GOOD entries:
      [{"key","value","lease","reason"}]. Every sample is one a reader must skip (with a reason)
      while it keeps serving the rest.
"""
import base64
import json
import sys


def write(path, entries):
    with open(path, "w") as f:
        json.dump(entries, f, indent=2, ensure_ascii=False)
        f.write("\n")


def good(dump, out, subs):
    kvs = json.load(open(dump)).get("kvs", [])
    pairs = [s.split("=", 1) for s in subs]
    entries = []
    for kv in kvs:
        key = base64.b64decode(kv["key"]).decode()
        value = base64.b64decode(kv.get("value", "")).decode()
        for token, standin in pairs:
            key = key.replace(token, standin)
            value = value.replace(token, standin)
        entries.append({"key": key, "value": value, "lease": kv.get("lease", 0) != 0})
    if not entries:
        sys.exit(f"fixtures.py: {dump} holds no keys")
    entries.sort(key=lambda e: e["key"])
    write(out, entries)


def find(entries, suffix):
    for e in entries:
        if e["key"].endswith(suffix):
            return e
    sys.exit(f"fixtures.py: no captured key ends with {suffix!r}")


def sample(key, value, reason):
    if not isinstance(value, str):
        value = json.dumps(value, separators=(",", ":"))
    return {"key": key, "value": value, "lease": True, "reason": reason}


def truncated(e):
    return sample(e["key"], e["value"][: len(e["value"]) // 2], "truncated JSON")


def bad_etcd_naming(entries):
    e = find(entries, "greeter/10.0.0.1:50051")
    v = json.loads(e["value"])
    return [
        truncated(e),
        sample("greeter/10.0.0.9:50051", "", "empty value"),
        sample("greeter/10.0.0.9:50051", "10.0.0.9:50051", "not JSON (a go-zero value)"),
        sample("greeter/greeter.internal:50051", {**v, "Addr": "greeter.internal:50051"},
               "Addr is a hostname, not an IP"),
        sample("greeter/10.0.0.9", {**v, "Addr": "10.0.0.9"}, "Addr has no port"),
        sample("greeter/10.0.0.9:50051", {"Op": 0, "Metadata": None}, "no Addr"),
        sample("greeter", "", "placeholder key: the target itself, no endpoint segment"),
    ]


def bad_go_zero(entries):
    e = find(entries, "greeter.rpc/42")
    return [
        sample("greeter.rpc/43", "", "empty value"),
        sample("greeter.rpc/43", "greeter-0.greeter.default.svc:8080", "value is a hostname, not an IP"),
        sample("greeter.rpc/43", "10.0.0.9", "value has no port"),
        sample("greeter.rpc/43", "10.0.0.9:99999", "port out of range"),
        sample("greeter.rpc/43", "grpc://10.0.0.9:8080", "value has a scheme; go-zero writes host:port"),
        sample("greeter.rpc/43", '{"Op":0,"Addr":"10.0.0.9:8080","Metadata":null}',
               "JSON value (etcd-naming), not host:port"),
        sample("greeter.rpc", "", "placeholder key: the service key itself, no id segment"),
        {**e, "key": "greeter.rpc/", "reason": "empty id segment"},
    ]


def bad_kratos(entries):
    e = find(entries, "/microservices/greeter/greeter-2")
    v = json.loads(e["value"])
    k = e["key"][: -len("greeter-2")]
    return [
        truncated(e),
        sample(k + "bad-1", {**v, "id": "bad-1", "endpoints": ["http://10.0.0.9:8000"]},
               "no grpc:// endpoint, http:// only"),
        sample(k + "bad-2", {**v, "id": "bad-2", "endpoints": []}, "no endpoints"),
        sample(k + "bad-3", {**v, "id": "bad-3", "endpoints": ["grpc://greeter.internal:9000"]},
               "grpc endpoint is a hostname, not an IP"),
        sample(k + "bad-4", {**v, "id": "bad-4", "endpoints": ["grpc://10.0.0.9"]},
               "grpc endpoint has no port"),
        sample(k + "bad-5", {**v, "id": "bad-5", "endpoints": ["10.0.0.9:9000"]},
               "endpoint without a scheme"),
        sample(k + "bad-6", {**v, "id": "bad-6", "name": "other"},
               "name in the value differs from the key's service (kratos' GetService skips it)"),
        sample(k.rstrip("/"), "", "placeholder key: the service itself, no instance segment"),
    ]


def bad_go_micro(entries):
    e = find(entries, "/micro/registry/greeter/greeter-node-2")
    v = json.loads(e["value"])
    node = v["nodes"][0]
    k = e["key"][: -len("greeter-node-2")]

    def with_node(id_, **changes):
        n = {**node, "id": id_, **changes}
        return {**v, "nodes": [n]}

    return [
        truncated(e),
        sample(k + "greeter-bad-1", with_node("greeter-bad-1", address="greeter.internal:50051"),
               "node address is a hostname, not an IP"),
        sample(k + "greeter-bad-2", with_node("greeter-bad-2", address="http://10.0.0.9:50051"),
               "node address has a scheme (http://); go-micro writes host:port"),
        sample(k + "greeter-bad-3",
               with_node("greeter-bad-3", metadata={**node["metadata"], "protocol": "http", "server": "http"}),
               "node protocol is http, not grpc"),
        sample(k + "greeter-bad-4",
               with_node("greeter-bad-4", metadata={**node["metadata"], "protocol": "mucp", "server": "mucp",
                                                    "transport": "http"}),
               "node protocol is mucp (go-micro's default RPC server), not grpc"),
        sample(k + "greeter-bad-5", with_node("greeter-bad-5", address="10.0.0.9"), "node address has no port"),
        sample(k + "greeter-bad-6", {**v, "nodes": []}, "no nodes"),
        sample(k.rstrip("/"), "", "placeholder key: the service itself, no node segment"),
    ]


def bad_kitex(entries):
    e = find(entries, "kitex/registry-etcd/greeter/10.0.0.2:8888")
    v = json.loads(e["value"])
    k = "kitex/registry-etcd/greeter/"
    return [
        truncated(e),
        sample(k + "greeter.internal:8888", {**v, "address": "greeter.internal:8888"},
               "address is a hostname, not an IP"),
        sample(k + "10.0.0.9", {**v, "address": "10.0.0.9"}, "address has no port"),
        sample(k + "/tmp/greeter.sock", {**v, "network": "unix", "address": "/tmp/greeter.sock"},
               "network is unix, not tcp"),
        sample(k + "10.0.0.9:8888", "", "empty value"),
        sample(k.rstrip("/"), "", "placeholder key: the service itself, no address segment"),
    ]


BAD = {
    "etcd-naming": bad_etcd_naming,
    "go-zero": bad_go_zero,
    "kratos": bad_kratos,
    "go-micro": bad_go_micro,
    "kitex": bad_kitex,
}


def main():
    mode = sys.argv[1]
    if mode == "good":
        good(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif mode == "bad":
        entries = json.load(open(sys.argv[2]))
        write(sys.argv[3], BAD[sys.argv[4]](entries))
    else:
        sys.exit(f"fixtures.py: unknown mode {mode}")


if __name__ == "__main__":
    main()
