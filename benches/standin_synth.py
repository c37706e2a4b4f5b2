#!/usr/bin/env python3
# A stand-in for scripts/synth (same command line and JSON output; simpler content) until that
# lands: schema2 images (a config and three layers each) in repositories of 20 images, a fraction
# `--untagged` of them untagged (every repository keeps at least one tag: 2.8's -m fails on a
# repository without tags), and a fraction `--garbage` of the blobs orphaned. No multi-arch images
# (--multiarch is accepted and ignored), no uploads, min_requests null. Deterministic for a seed.
# Used by the numbers in BENCHMARKS.md marked "stand-in":
#   REGSWEEP_BENCH_SYNTH=benches/standin_synth.py scripts/bench
# Remove once scripts/synth is merged.
import argparse, hashlib, json, os, random, tempfile, time
p = argparse.ArgumentParser()
p.add_argument("--out", required=True); p.add_argument("--endpoint")
p.add_argument("--blobs", type=int, required=True); p.add_argument("--repos", type=int)
p.add_argument("--garbage", type=float, default=0.2); p.add_argument("--untagged", type=float, default=0.2)
p.add_argument("--multiarch", type=float, default=0.0); p.add_argument("--seed", type=int, default=1)
a = p.parse_args(); t0 = time.time(); rnd = random.Random(a.seed)
s3 = a.out.startswith("s3://")
root = tempfile.mkdtemp(prefix="fakesynth-") if s3 else os.path.abspath(a.out)
v2 = os.path.join(root, "docker/registry/v2")
def w(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f: f.write(data)
def blob(data):
    d = hashlib.sha256(data).hexdigest()
    w(f"{v2}/blobs/sha256/{d[:2]}/{d}/data", data); return d
def link(path, d): w(path, f"sha256:{d}".encode())
images = int(a.blobs * (1 - a.garbage) / 5); garbage = a.blobs - 5 * images
repos = a.repos or max(1, images // 20)
stats = dict(blobs=0, repositories=repos, tags=0, manifests=0, objects=0, garbage_blobs=garbage, garbage_blobs_untagged=0, bytes=0)
for i in range(images):
    r = f"team{i % repos % 17}/app{i % repos}"; rd = f"{v2}/repositories/{r}"
    cfg = blob(json.dumps({"architecture": "amd64", "n": i}).encode())
    layers = [blob(rnd.randbytes(64)) for _ in range(3)]
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1, "digest": f"sha256:{cfg}"},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 64, "digest": f"sha256:{l}"} for l in layers]}).encode()
    md = blob(m)
    for d in [cfg] + layers: link(f"{rd}/_layers/sha256/{d}/link", d)
    link(f"{rd}/_manifests/revisions/sha256/{md}/link", md); stats["manifests"] += 1
    # the first image of each repo is always tagged (2.8's -m fails on a repository without tags)
    if i < repos or rnd.random() >= a.untagged:
        t = f"v{i}"; link(f"{rd}/_manifests/tags/{t}/current/link", md); link(f"{rd}/_manifests/tags/{t}/index/sha256/{md}/link", md); stats["tags"] += 1
    else:
        stats["garbage_blobs_untagged"] += 5
for _ in range(garbage): blob(rnd.randbytes(64))
for d, _, names in os.walk(root):
    for n in names:
        stats["objects"] += 1; stats["bytes"] += os.path.getsize(os.path.join(d, n))
stats["blobs"] = 5 * images + garbage
stats["min_requests"] = None
if s3:
    bucket, _, prefix = a.out[5:].partition("/")
    import boto3, shutil
    from concurrent.futures import ThreadPoolExecutor
    client = boto3.client("s3", endpoint_url=a.endpoint, region_name="us-east-1",
                          aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
                          aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"))
    try:
        client.create_bucket(Bucket=bucket)
    except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
        pass
    files = [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]
    def put(path):
        key = (prefix.strip("/") + "/" if prefix.strip("/") else "") + os.path.relpath(path, root)
        with open(path, "rb") as f:
            client.put_object(Bucket=bucket, Key=key, Body=f.read())
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))
    shutil.rmtree(root)
else:
    with open(os.path.join(root, "config.yml"), "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: \"{root}\"\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:5000\n")
stats["seconds"] = round(time.time() - t0, 2)
print(json.dumps(stats))
