#!/usr/bin/env bash
# A remote export that demands TLS (nbdkit --tls=require on TCP): first with a pre-shared key,
# then with X.509 certificates and --tls-verify-peer. Clients without TLS, with a wrong key or
# a certificate from another CA are refused; the right ones (libnbd, qemu-io) write a pattern
# and read it back, and the image file holds every pattern when the server has gone.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit psktool certtool qemu-io nbd-client cmp

mnt=$(make_fs ext4 128M)
img=$mnt/remote.img
truncate -s 64M "$img"

# start_tcp_server [nbdkit options...]: nbdkit on a free port of 127.0.0.1; sets PORT and
# what stop_server needs.
start_tcp_server() {
  local _
  for _ in 1 2 3; do
    PORT=$($PYTHON -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    rm -f "$T/pid"
    SERVER_LOG=$T/server.log
    env ${LOOPDIO_PRELOAD:+LD_PRELOAD="$LOOPDIO_PRELOAD"} \
      nbdkit -f -i 127.0.0.1 -p "$PORT" -P "$T/pid" "$@" "$PLUGIN" file="$img" 2>"$SERVER_LOG" &
    SERVER_PID=$!
    at_exit "kill $SERVER_PID"
    while [ ! -s "$T/pid" ] && kill -0 "$SERVER_PID" 2>/dev/null; do sleep 0.05; done
    [ -s "$T/pid" ] && return 0
    grep -q 'Address already in use' "$T/server.log" || break  # another test took the port
  done
  cat "$T/server.log" >&2
  fail "nbdkit $* did not start"
}

# client ok|refused TLS-SETTINGS...: one libnbd client. "psk FILE USER", "cert DIR" or "none".
# An accepted client writes a pattern at a fresh offset, reads it back and leaves it in
# $T/patterns/OFFSET for the final check of the image file.
mkdir "$T/patterns"
nclients=0
client() {
  nclients=$((nclients + 1))
  $PYTHON - "$PORT" "$nclients" "$T/patterns" "$@" <<'PY' || fail "client $*"
import random, sys, nbd
port, n, patterns, expect, mode, *args = sys.argv[1:]
h = nbd.NBD()
if mode == "none":
    h.set_tls(nbd.TLS_DISABLE)
else:
    h.set_tls(nbd.TLS_REQUIRE)
    if mode == "psk":
        h.set_tls_psk_file(args[0])
        h.set_tls_username(args[1])
    else:
        h.set_tls_certificates(args[0])
try:
    h.connect_tcp("127.0.0.1", port)
except nbd.Error as e:
    if expect == "refused":
        assert mode != "none" or "requires TLS" in str(e), e
        print(f"refused ({' '.join([mode] + args)}): {e}")
        sys.exit(0)
    raise
assert expect == "ok", f"{mode} {args}: a client that should be refused was served"
assert h.get_tls_negotiated()
off = int(n) << 20
data = random.Random(off).randbytes(256 << 10)
h.pwrite(data, off, nbd.CMD_FLAG_FUA)
assert h.pread(len(data), off) == data
h.shutdown()
open(f"{patterns}/{off}", "wb").write(data)
PY
}

# qemu_io ok|refused --object ... : qemu-io writes and checks a pattern through the export.
qemu_io() {
  local expect=$1 obj=$2 opts=driver=nbd,host=127.0.0.1,port=$PORT
  if [ -n "$obj" ]; then opts+=,tls-creds=tls0; fi
  if qemu-io ${obj:+--object "$obj"} --image-opts "$opts" \
    -c 'write -P 0x5a 60M 1M' -c 'read -P 0x5a 60M 1M' >"$T/qemu.out" 2>&1 &&
    grep -q 'read 1048576/1048576' "$T/qemu.out" && ! grep -q 'Pattern verification failed' "$T/qemu.out"; then
    [ "$expect" = ok ] || { cat "$T/qemu.out"; fail "qemu-io ($obj): served, should be refused"; }
  else
    [ "$expect" = refused ] || { cat "$T/qemu.out"; fail "qemu-io ($obj)"; }
    [ -n "$obj" ] || grep -q 'TLS negotiation required' "$T/qemu.out" || fail "qemu-io: $(cat "$T/qemu.out")"
    echo "qemu-io refused: $(head -1 "$T/qemu.out")"
  fi
}

# handshakes_refused N: the server itself turned down exactly N TLS handshakes.
handshakes_refused() {
  local n
  n=$(grep -c 'error: gnutls_handshake' "$T/server.log" || true)
  [ "$n" -eq "$1" ] || { cat "$T/server.log"; fail "the server refused $n handshakes, not $1"; }
}

# --- PSK: psktool makes KEYDIR/keys.psk (the name qemu's tls-creds-psk looks for) ---
mkdir -m 0700 "$T/psk" "$T/psk-wrong"
psktool -u alice -p "$T/psk/keys.psk" >/dev/null
psktool -u alice -p "$T/psk-wrong/keys.psk" >/dev/null   # same user, another key
psktool -u mallory -p "$T/psk-mallory.psk" >/dev/null

start_tcp_server --tls=require --tls-psk="$T/psk/keys.psk"
client refused none
client refused psk "$T/psk-wrong/keys.psk" alice
client refused psk "$T/psk-mallory.psk" mallory
client ok psk "$T/psk/keys.psk" alice
qemu_io refused ""
qemu_io refused "tls-creds-psk,id=tls0,endpoint=client,dir=$T/psk-wrong,username=alice"
qemu_io ok "tls-creds-psk,id=tls0,endpoint=client,dir=$T/psk,username=alice"
stop_server
handshakes_refused 3
pass "TLS with a PSK: refused without TLS and with a wrong key; libnbd and qemu-io served"

# --- X.509: a CA, the server's certificate, a client's, and a client of another CA ---
cert() { # cert NAME CA-NAME TEMPLATE-LINES...: NAME-key.pem, NAME-cert.pem (self-signed if CA-NAME is -)
  local name=$1 ca=$2
  shift 2
  printf '%s\n' "$@" "expiration_days = 2" >"$T/x509/$name.info"
  certtool --generate-privkey --key-type=ecdsa --outfile "$T/x509/$name-key.pem" 2>/dev/null
  if [ "$ca" = - ]; then
    certtool --generate-self-signed --load-privkey "$T/x509/$name-key.pem" \
      --template "$T/x509/$name.info" --outfile "$T/x509/$name-cert.pem" 2>/dev/null
  else
    certtool --generate-certificate --load-privkey "$T/x509/$name-key.pem" \
      --load-ca-certificate "$T/x509/$ca-cert.pem" --load-ca-privkey "$T/x509/$ca-key.pem" \
      --template "$T/x509/$name.info" --outfile "$T/x509/$name-cert.pem" 2>/dev/null
  fi || fail "certtool: $name"
}
mkdir -m 0700 "$T/x509"
cert ca - "cn = loopdio test CA" ca cert_signing_key
cert rogue-ca - "cn = another CA" ca cert_signing_key
cert server ca "cn = localhost" "dns_name = localhost" "ip_address = 127.0.0.1" tls_www_server signing_key
cert client ca "cn = client.test" tls_www_client signing_key
cert rogue rogue-ca "cn = rogue.test" tls_www_client signing_key
# The directories nbdkit, libnbd and qemu read: fixed names in each.
pki() { mkdir -m 0700 "$T/$1"; cp "$T/x509/ca-cert.pem" "$T/$1/ca-cert.pem"; }
pki pki-server
cp "$T/x509/server-cert.pem" "$T/x509/server-key.pem" "$T/pki-server/"
pki pki-client
cp "$T/x509/client-cert.pem" "$T/pki-client/client-cert.pem"
cp "$T/x509/client-key.pem" "$T/pki-client/client-key.pem"
pki pki-rogue
cat "$T/x509/rogue-ca-cert.pem" >>"$T/pki-rogue/ca-cert.pem"  # trusts the server, and itself
cp "$T/x509/rogue-cert.pem" "$T/pki-rogue/client-cert.pem"
cp "$T/x509/rogue-key.pem" "$T/pki-rogue/client-key.pem"
pki pki-anonymous

start_tcp_server --tls=require --tls-certificates="$T/pki-server" --tls-verify-peer
client refused none
client refused cert "$T/pki-anonymous"
client refused cert "$T/pki-rogue"
client ok cert "$T/pki-client"
qemu_io refused ""
qemu_io refused "tls-creds-x509,id=tls0,endpoint=client,dir=$T/pki-rogue"
qemu_io ok "tls-creds-x509,id=tls0,endpoint=client,dir=$T/pki-client"
# The kernel's client: TLS only with certificates, and only the long options work in 3.24.
# Listing the exports goes through the whole TLS handshake without needing /dev/nbd*.
nbd_client_list() {
  nbd-client -l 127.0.0.1 "$PORT" -cacertfile "$T/$1/ca-cert.pem" \
    ${2:+-certfile "$T/$1/client-cert.pem" -keyfile "$T/$1/client-key.pem"} >"$T/nbd-client.out" 2>&1
}
nbd_client_list pki-client with-cert || { cat "$T/nbd-client.out"; fail "nbd-client -l with certificates"; }
if nbd_client_list pki-client; then fail "nbd-client -l: served without a client certificate"; fi
stop_server
handshakes_refused 4
pass "TLS with certificates: refused without TLS, without a client certificate and from another CA; libnbd, qemu-io and nbd-client served with the CA's"

for p in "$T"/patterns/*; do
  cmp -n "$(stat -c %s "$p")" -i "0:$(basename "$p")" "$p" "$img" || fail "pattern at $(basename "$p") not in the image"
done
$PYTHON -c 'import sys; d = open(sys.argv[1], "rb").read()[60 << 20:61 << 20]; assert d == b"\x5a" * len(d)' "$img" ||
  fail "qemu-io's pattern not in the image"
pass "every pattern written over TLS is in the image file"
