#!/bin/sh
# One visit: count it in kv and say who answered.
n=$(timeout 2 wget -q -O - "http://${KV_HOST}:${KV_PORT}/cgi-bin/incr" 2>/dev/null)
if [ -z "$n" ]; then
    printf 'Status: 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\nkv at %s:%s did not answer\n' "$KV_HOST" "$KV_PORT"
    exit 0
fi
printf 'Content-Type: text/plain\r\n\r\n%s from %s: visit %s\n' "${GREETING:-hello}" "$(hostname)" "$n"
