#!/bin/sh
# One visit: count it in kv and say who answered. kv may be restarting (its engine brings it
# back after a crash): try for about 5 s (up to 20 tries, 250 ms apart) before answering 502,
# so a restart of kv costs latency, not failed requests.
until=$(($(date +%s) + 5))
tries=0
while :; do
    n=$(timeout 2 wget -q -O - "http://${KV_HOST}:${KV_PORT}/cgi-bin/incr" 2>/dev/null)
    [ -n "$n" ] && break
    tries=$((tries + 1))
    if [ "$tries" -ge 20 ] || [ "$(date +%s)" -ge "$until" ]; then
        printf 'Status: 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\nkv at %s:%s did not answer in %s tries\n' "$KV_HOST" "$KV_PORT" "$tries"
        exit 0
    fi
    usleep 250000
done
printf 'Content-Type: text/plain\r\n\r\n%s from %s: visit %s\n' "${GREETING:-hello}" "$(hostname)" "$n"
