#!/usr/bin/env python3
"""Checks that the compose `cluster` profile and its ClickHouse config files agree.

- every ClickHouse node service (mounting deploy/cluster/cluster.xml) has a macros
  file whose replica is its own service name, whose cluster is the cluster of
  remote_servers, and whose shard is the shard remote_servers lists it under;
- remote_servers lists every node exactly once, with internal_replication on;
- the <zookeeper> nodes are the Keeper services, on the Keeper's tcp_port, and the
  Keeper's raft_configuration names exactly those services (1 or 3 of them);
- every collector with COLLECTOR__CLICKHOUSE__CLUSTER names that cluster (the key
  exists in the collector's config), writes to a node and waits for all of them;
- the cluster Grafana reads a node; the inter-server secret is set on every node.

It then breaks a copy of the configuration in a few ways and checks that each is
caught. Run by scripts/test.sh (needs PyYAML, which Debian's docker-compose brings).
"""

import copy
import os
import sys
import xml.etree.ElementTree as ET
from urllib.parse import urlparse

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_XML = "./deploy/cluster/cluster.xml"
KEEPER_XML = "./deploy/cluster/keeper.xml"


def mounts(service):
    """host path -> container path of a service's bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        parts = v.split(":")
        if parts[0].startswith("./"):
            out[parts[0]] = parts[1]
    return out


def load(rel):
    return ET.parse(os.path.join(ROOT, rel)).getroot()


def read_config():
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    xml = {CLUSTER_XML: load(CLUSTER_XML), KEEPER_XML: load(KEEPER_XML)}
    for svc in services.values():
        for host in mounts(svc):
            if host.startswith("./deploy/cluster/macros-"):
                xml[host] = load(host)
    grafana = None
    for svc in services.values():
        for host, target in mounts(svc).items():
            if host == "./deploy/cluster/grafana":
                with open(os.path.join(ROOT, host, "clickhouse.yaml")) as f:
                    grafana = yaml.safe_load(f)
    with open(os.path.join(ROOT, "collector/src/exporters/clickhouse/config.rs")) as f:
        collector_config = f.read()
    return {"services": services, "xml": xml, "grafana": grafana, "collector_config": collector_config}


def check(cfg):
    errors = []
    services, xml = cfg["services"], cfg["xml"]
    nodes = {n: s for n, s in services.items() if CLUSTER_XML in mounts(s)}
    keepers = {n: s for n, s in services.items() if KEEPER_XML in mounts(s)}
    if not nodes:
        return ["no service mounts " + CLUSTER_XML]
    for name, s in list(nodes.items()) + list(keepers.items()):
        if "cluster" not in s.get("profiles", []):
            errors.append(f"{name} is not in the cluster profile")

    remote = xml[CLUSTER_XML].find("remote_servers")
    clusters = list(remote)
    if len(clusters) != 1:
        errors.append(f"remote_servers holds {len(clusters)} clusters, expected 1")
        return errors
    cluster = clusters[0]
    cluster_name = cluster.tag
    placed = {}
    for shard_no, shard in enumerate(cluster.findall("shard"), start=1):
        if (shard.findtext("internal_replication") or "").strip() != "true":
            errors.append(f"shard {shard_no}: internal_replication is not true")
        for replica in shard.findall("replica"):
            host = replica.findtext("host").strip()
            if host in placed:
                errors.append(f"{host} is listed twice in remote_servers")
            placed[host] = shard_no
            if host not in nodes:
                errors.append(f"remote_servers names {host}, which is no ClickHouse node service")
    for name in nodes:
        if name not in placed:
            errors.append(f"node {name} is missing from remote_servers")

    for name, s in nodes.items():
        macros_files = [h for h in mounts(s) if h.startswith("./deploy/cluster/macros-")]
        if len(macros_files) != 1:
            errors.append(f"{name} mounts {len(macros_files)} macros files, expected 1")
            continue
        macros = xml[macros_files[0]].find("macros")
        replica = (macros.findtext("replica") or "").strip()
        shard = (macros.findtext("shard") or "").strip()
        mcluster = (macros.findtext("cluster") or "").strip()
        if replica != name:
            errors.append(f"{name}: macro replica is {replica!r}")
        if name in placed and shard != str(placed[name]):
            errors.append(f"{name}: macro shard is {shard!r}, remote_servers has it in shard {placed[name]}")
        if mcluster != cluster_name:
            errors.append(f"{name}: macro cluster is {mcluster!r}, remote_servers defines {cluster_name!r}")
        secret = cluster.find("secret")
        env = secret.get("from_env") if secret is not None else None
        entry = " ".join(s.get("entrypoint", []))
        if env and f"{env}=" not in entry:
            errors.append(f"{name}: the entrypoint does not set {env} (the cluster secret)")

    keeper = xml[KEEPER_XML].find("keeper_server")
    port = keeper.findtext("tcp_port").strip()
    raft = [srv.findtext("hostname").strip() for srv in keeper.find("raft_configuration")]
    if len(raft) not in (1, 3):
        errors.append(f"Keeper has {len(raft)} raft members: use 1 (demo) or 3")
    if sorted(raft) != sorted(keepers):
        errors.append(f"Keeper raft members {raft} are not the Keeper services {sorted(keepers)}")
    zk = [(n.findtext("host").strip(), n.findtext("port").strip()) for n in xml[CLUSTER_XML].find("zookeeper")]
    if sorted(h for h, _ in zk) != sorted(keepers):
        errors.append(f"<zookeeper> lists {zk}, the Keeper services are {sorted(keepers)}")
    for host, p in zk:
        if p != port:
            errors.append(f"<zookeeper> node {host} port {p}, Keeper listens on {port}")

    if "pub cluster: String" not in cfg["collector_config"]:
        errors.append("the collector's ClickHouse config has no `cluster` key")
    collectors = {n: s for n, s in services.items()
                  if "COLLECTOR__CLICKHOUSE__CLUSTER" in (s.get("environment") or {})}
    if len(collectors) < 2:
        errors.append(f"{len(collectors)} collectors with clickhouse.cluster, expected at least 2")
    for name, s in collectors.items():
        env = s["environment"]
        if env["COLLECTOR__CLICKHOUSE__CLUSTER"] != cluster_name:
            errors.append(f"{name}: clickhouse.cluster={env['COLLECTOR__CLICKHOUSE__CLUSTER']!r}, "
                          f"remote_servers defines {cluster_name!r}")
        host = urlparse(env.get("CLICKHOUSE_URL", "")).hostname
        if host not in nodes:
            errors.append(f"{name}: CLICKHOUSE_URL host {host!r} is no ClickHouse node")
        missing = sorted(set(nodes) - set(s.get("depends_on", {})))
        if missing:
            errors.append(f"{name}: does not wait for {missing}")

    if cfg["grafana"] is None:
        errors.append("no service mounts deploy/cluster/grafana")
    else:
        host = cfg["grafana"]["datasources"][0]["jsonData"]["host"]
        if host not in nodes:
            errors.append(f"the cluster Grafana reads {host!r}, which is no ClickHouse node")
    return errors


def main():
    cfg = read_config()
    errors = check(cfg)
    if errors:
        print("cluster config disagrees:\n  " + "\n  ".join(errors))
        return 1

    # The check must catch each of these.
    def swap_shard(c):
        node = next(n for n, s in c["services"].items() if CLUSTER_XML in mounts(s))
        macros = next(h for h in mounts(c["services"][node]) if "macros-" in h)
        el = c["xml"][macros].find("macros/shard")
        el.text = str(int(el.text) % 2 + 1)

    def rename_cluster(c):
        for s in c["services"].values():
            env = s.get("environment") or {}
            if "COLLECTOR__CLICKHOUSE__CLUSTER" in env:
                env["COLLECTOR__CLICKHOUSE__CLUSTER"] = "other"
                return

    def drop_replica(c):
        shard = c["xml"][CLUSTER_XML].find("remote_servers")[0].find("shard")
        shard.remove(shard.find("replica"))

    def wrong_keeper_port(c):
        c["xml"][CLUSTER_XML].find("zookeeper/node/port").text = "2181"

    for breakage in (swap_shard, rename_cluster, drop_replica, wrong_keeper_port):
        broken = copy.deepcopy(cfg)
        breakage(broken)
        if not check(broken):
            print(f"the check missed a broken config: {breakage.__name__}")
            return 1
    nodes = sum(1 for s in cfg["services"].values() if CLUSTER_XML in mounts(s))
    print(f"cluster config agrees: {nodes} ClickHouse nodes, Keeper, collectors, Grafana; "
          "4 kinds of breakage caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
