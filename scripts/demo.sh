#!/usr/bin/env bash
# The main job, from nothing: a fresh SoftHSM token with a DSC key, development CAs and
# certificates (dev-init), the daemon, the sample batch (samples/sample-batch.json, 100 fictional
# people) submitted and fetched over mutual TLS with curl, every result verified against the
# trust list the daemon serves, and one QR code drawn.
# Everything lands in ./demo (recreated on each run). Development only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

cargo build --release --locked --bin hcert-signer
bin=target/release/hcert-signer

rm -rf demo
"$bin" dev-init --dir demo
"$bin" serve --config demo/config.toml 2> demo/daemon.log &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT

api="https://$(sed -n 's/^listen = "\(.*\)"$/\1/p' demo/config.toml)"
ops="http://$(sed -n 's/^metrics_listen = "\(.*\)"$/\1/p' demo/config.toml)"
tls=(--silent --show-error --cacert demo/tls/ca.pem --cert demo/tls/issuer.pem --key demo/tls/issuer.key)

for _ in $(seq 100); do curl -sf "$ops/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "$ops/readyz" >/dev/null || { echo "the daemon did not become ready:"; cat demo/daemon.log; exit 1; }

echo "submitting samples/sample-batch.json ($api/v1/batches):"
curl "${tls[@]}" -H 'content-type: application/json' --data-binary @samples/sample-batch.json \
    -D demo/submit.headers "$api/v1/batches" > demo/submit.json
cat demo/submit.json; echo
batch=$(sed -n 's/.*"batch_id":"\([^"]*\)".*/\1/p' demo/submit.json)

for _ in $(seq 600); do
    curl "${tls[@]}" "$api/v1/batches/$batch" > demo/status.json
    grep -q '"state":"done"' demo/status.json && break
    sleep 0.2
done
echo "status: $(cat demo/status.json)"
curl "${tls[@]}" "$api/v1/batches/$batch/results" > demo/results.ndjson
curl "${tls[@]}" "$api/v1/trust-list" > demo/trust-list-served.json

grep -o '"hc1":"[^"]*"' demo/results.ndjson | cut -d'"' -f4 > demo/hc1.txt
"$bin" verify --trust-list demo/trust-list-served.json < demo/hc1.txt > demo/verify.ndjson
echo "verified: $(grep -c '"ok":true' demo/verify.ndjson) of $(wc -l < demo/results.ndjson) results"
head -n1 demo/hc1.txt | "$bin" qr --output demo/first.png
echo "QR code of the first certificate: demo/first.png"

curl "${tls[@]}" -X DELETE "$api/v1/batches/$batch" >/dev/null
kill -TERM $daemon
wait $daemon
trap - EXIT
echo "daemon stopped cleanly; its log is demo/daemon.log"
