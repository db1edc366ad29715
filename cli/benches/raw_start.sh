#!/usr/bin/env bash
# The raw equivalent of `quarry start examples/guestbook`, for `cargo bench --bench start`:
# the same images built from the same directories, the same network, containers, env, restart
# policy, ports and health waits, and the same nginx, by hand with docker and nginx commands.
#
#   raw_start.sh up   DIR NAME PREFIX LISTEN_PORT KV_PORT WEB0_PORT WEB1_PORT
#   raw_start.sh down NAME PREFIX
#
# `up` returns once both web replicas answer through nginx.
set -euo pipefail

# One HTTP/1.0 GET on 127.0.0.1: http_get PORT HOST PATH (prints the response).
http_get() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$3" "$2" >&3
        cat <&3
    ) 2>/dev/null
}

# wait_for WHAT COMMAND...: run COMMAND until it succeeds, for at most 60 s.
wait_for() {
    local what=$1 end=$((SECONDS + 60))
    shift
    until "$@"; do
        if ((SECONDS > end)); then
            echo "raw_start: $what not ready after 60 s" >&2
            exit 1
        fi
        sleep 0.05
    done
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { http_get "$1" 127.0.0.1 "$2" | head -n1 | grep -q ' [23][0-9][0-9] '; }
# Both replicas have answered through nginx.
both_answer() {
    local seen=""
    for _ in 1 2 3 4; do
        seen+=$(http_get "$1" guestbook.test / | grep -o 'from web-r1-[01]' || true)
    done
    [[ $seen == *web-r1-0* && $seen == *web-r1-1* ]]
}

case ${1:-} in
up)
    dir=$2 name=$3 prefix=$4 listen=$5 kv_port=$6 web0=$7 web1=$8
    tar -ch -C "$dir/kv" . | docker build -q -t "raw/$name-kv" - >/dev/null
    tar -ch -C "$dir/web" . | docker build -q -t "raw/$name-web" - >/dev/null
    docker network create "raw-$name" >/dev/null
    common=(--restart unless-stopped --init --network "raw-$name")
    docker run -d "${common[@]}" --name "raw-$name-kv" --network-alias kv-r1-0 -m 32m \
        -p "127.0.0.1:$kv_port:7000" "raw/$name-kv" /bin/httpd -f -p 7000 -h /www >/dev/null
    wait_for "kv" tcp_open "$kv_port"
    env=(-e GREETING=hello -e KV_HOST=kv-r1-0 -e KV_PORT=7000
        -e KV_PORT_7000_TCP_ADDR=kv-r1-0 -e KV_PORT_7000_TCP_PORT=7000)
    docker run -d "${common[@]}" --name "raw-$name-ticker" --network-alias ticker-r1-0 -m 16m \
        "${env[@]}" -e TICK_EVERY=5 "raw/$name-web" /bin/sh -c /bin/ticker >/dev/null
    for i in 0 1; do
        port=$web0
        [[ $i == 1 ]] && port=$web1
        docker run -d "${common[@]}" --name "raw-$name-web-$i" --network-alias "web-r1-$i" \
            --hostname "web-r1-$i" -m 32m "${env[@]}" -p "127.0.0.1:$port:8080" \
            "raw/$name-web" /bin/httpd -f -p 8080 -h /www >/dev/null
    done
    wait_for "web-r1-0" http_ok "$web0" /health
    wait_for "web-r1-1" http_ok "$web1" /health
    mkdir -p "$prefix/conf" "$prefix/logs" "$prefix/run" "$prefix/tmp"
    cat >"$prefix/conf/nginx.conf" <<CONF
worker_processes 1;
pid run/nginx.pid;
error_log logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    upstream web { server 127.0.0.1:$web0; server 127.0.0.1:$web1; }
    server {
        listen 127.0.0.1:$listen;
        server_name guestbook.test;
        location / { proxy_pass http://web; proxy_set_header Host \$host; }
    }
}
CONF
    nginx -t -q -p "$prefix" -c conf/nginx.conf -e logs/error.log
    nginx -p "$prefix" -c conf/nginx.conf -e logs/error.log
    wait_for "both replicas through nginx" both_answer "$listen"
    ;;
down)
    name=$2 prefix=$3
    if [[ -f $prefix/run/nginx.pid ]]; then
        nginx -p "$prefix" -c conf/nginx.conf -e logs/error.log -s stop 2>/dev/null || true
    fi
    rm -rf "$prefix"
    docker rm -f "raw-$name-kv" "raw-$name-ticker" "raw-$name-web-0" "raw-$name-web-1" >/dev/null 2>&1 || true
    docker network rm "raw-$name" >/dev/null 2>&1 || true
    docker rmi -f "raw/$name-kv" "raw/$name-web" >/dev/null 2>&1 || true
    ;;
*)
    echo "usage: $0 up DIR NAME PREFIX LISTEN_PORT KV_PORT WEB0_PORT WEB1_PORT | down NAME PREFIX" >&2
    exit 2
    ;;
esac
