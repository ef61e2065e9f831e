#!/usr/bin/env bash
# Throwaway certificates for the chart's TLS tests, laid out as the keys of the
# kubernetes.io/tls Secret cert-manager writes for a Certificate from a CA issuer:
#
#   make-certs.sh DIR [CA_DIR]
#
# DIR gets tls.crt (a server certificate for localhost and 127.0.0.1, which is also
# good as a client certificate), tls.key (RSA in PKCS#1, cert-manager's default
# encoding), ca.crt (the CA that signed it), and the CA's own ca.key. With CA_DIR (an
# earlier DIR), that CA signs a new certificate: a renewal. Valid for one day.
set -euo pipefail
dir="$1"
ca_dir="${2:-$dir}"
mkdir -p "$dir"
cd "$dir"
if [ "$ca_dir" = "$dir" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=herald-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout ca.key -out ca.crt 2>/dev/null
else
  cp "$ca_dir/ca.crt" "$ca_dir/ca.key" .
fi
openssl genrsa -traditional -out tls.key 2048 2>/dev/null
openssl req -new -key tls.key -subj "/CN=localhost" -out tls.csr
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
  "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >tls.ext
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
  -days 1 -extfile tls.ext -out tls.crt 2>/dev/null
rm -f tls.csr tls.ext
