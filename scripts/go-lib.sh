# Shared by the scripts that build tools with Go (k8s-bin.sh, helm-bin.sh, otelcol-bin.sh): source it after
# defining log() and die().

# find_go HINT: set GO to the go command (on PATH, or /usr/local/go/bin/go), or die saying HINT.
find_go() {
    GO="$(command -v go || true)"
    [[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
    [[ -n "$GO" ]] || die "no go on PATH (nor /usr/local/go/bin/go); $1"
}

# use_module_proxy_only: builds fetch from the module proxy only (the `direct` VCS fallback dropped, so nothing
# is fetched from source hosts), static binaries, no VCS stamping.
use_module_proxy_only() {
    local proxy
    proxy="$("$GO" env GOPROXY)"
    proxy="$(tr ',|' '\n\n' <<<"$proxy" | grep -vx -e direct -e off -e '' | paste -sd, -)"
    [[ -n "$proxy" ]] || die "GOPROXY names no module proxy"
    export GOPROXY="$proxy" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false"
}
