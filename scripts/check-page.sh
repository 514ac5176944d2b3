#!/usr/bin/env bash
# Checks `siam serve`'s search page in headless Chromium (Debian's `chromium` package):
# trains the embedded demo model, serves its index, loads `/?q=...` (the page runs that text
# query on load), checks that the rendered page holds ranked thumbnails with scores whose
# images loaded, and writes a screenshot (default docs/serve.png).
#
#   apt-get install -y chromium       # once
#   scripts/check-page.sh [SCREENSHOT.png]
#
# Env: SIAM_BIN (default: target/release/siam, built if missing), CHROMIUM (default: chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
shot="${1:-docs/serve.png}"
chromium="${CHROMIUM:-chromium}"
command -v "$chromium" >/dev/null || { echo "check-page: $chromium not found (apt-get install -y chromium)" >&2; exit 1; }
bin="${SIAM_BIN:-target/release/siam}"
[ -x "$bin" ] || cargo build --release --bin siam
work="$(mktemp -d)"
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$bin" train --out "$work/model" --quiet 2> "$work/train.log" || { cat "$work/train.log" >&2; exit 1; }
"$bin" serve --index "$work/model" --addr 127.0.0.1:0 2> "$work/serve.log" &
server=$!
addr=""
for _ in $(seq 1 600); do
  addr="$(sed -n 's|^listening on http://\([^/]*\)/.*|\1|p' "$work/serve.log")"
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "check-page: the server did not start" >&2; cat "$work/serve.log" >&2; exit 1; }
url="http://$addr/?q=a+large+red+circle+on+a+white+background&k=12"

chrome() {
  "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d -p "$work")" --window-size=1200,900 \
    --virtual-time-budget=15000 "$@" 2>> "$work/chromium.log"
}

# The DOM after the query ran: 12 cards, each with a rank, a score and a thumbnail that loaded
# (the page marks a card "loaded" when its image's load event fired).
dom="$(chrome --dump-dom "$url")"
cards="$(grep -Eo 'class="card( loaded)?"' <<< "$dom" | wc -l)"
loaded="$(grep -o 'class="card loaded"' <<< "$dom" | wc -l)"
ranks="$(grep -o 'class="rank">#[0-9]*<' <<< "$dom" | wc -l)"
scores="$(grep -Eo 'class="score">-?[0-9]\.[0-9]{3}<' <<< "$dom" | wc -l)"
thumbs="$(grep -Eo 'src="/api/images/[0-9]+"' <<< "$dom" | wc -l)"
status="$(sed -n 's|.*<div id="status"[^>]*>\([^<]*\)<.*|\1|p' <<< "$dom")"
echo "page: $cards cards, $ranks ranks, $scores scores, $thumbs thumbnails ($loaded loaded); status: $status"
[ "$cards" -eq 12 ] && [ "$ranks" -eq 12 ] && [ "$thumbs" -eq 12 ] && [ "$loaded" -eq 12 ] \
  && [ "$scores" -ge 12 ] || {
  echo "check-page: the page does not show 12 ranked thumbnails with scores" >&2; exit 1; }
# Every thumbnail the page shows is served (JPEG).
for id in $(grep -Eo 'src="/api/images/[0-9]+"' <<< "$dom" | grep -Eo '[0-9]+'); do
  type="$(curl -s -o /dev/null -w '%{http_code} %{content_type}' "http://$addr/api/images/$id")"
  [ "$type" = "200 image/jpeg" ] || { echo "check-page: thumbnail $id: $type" >&2; exit 1; }
done
mkdir -p "$(dirname "$shot")"
chrome --screenshot="$work/shot.png" --hide-scrollbars "$url"
mv "$work/shot.png" "$shot"
echo "check-page: ok, screenshot in $shot"
