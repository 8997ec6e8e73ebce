#!/bin/sh
# Lays out the files of the shipped image in OUT: the static binary, a CA bundle for platform
# TLS, and /etc/passwd and /etc/group entries for the user 65532 (nonroot). Run by the
# Dockerfile's build stage and by hack/image.sh alike, so that both ship the same tree.
#
#   hack/image-rootfs.sh BINARY CA_BUNDLE OUT
set -eu
binary=$1 ca=$2 out=$3
rm -rf "$out"
mkdir -p "$out/etc/ssl/certs"
cp "$binary" "$out/mxcred-operator"
chmod 0755 "$out/mxcred-operator"
cp "$ca" "$out/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
