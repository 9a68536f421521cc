# keystored in a container. The image is FROM scratch: nothing is pulled, it
# holds one static binary that the caller builds first:
#
#   CGO_ENABLED=0 go build -o bin/keystored ./cmd/keystored    # make build does this
#   docker build -t keystore .
#
# Run a single node:  docker run --rm -p 127.0.0.1:7001:7001 keystore
# Run three:          docker-compose up -d   (see docker-compose.yml and cluster-test/docker.md)
FROM scratch

COPY bin/keystored /keystored

# NB: scratch has no directories, no shell and no users. The data dir is made
# by copying an empty directory (bin/data, which `make build` leaves) owned by
# the unprivileged uid/gid 65532 that keystored runs as; a named volume mounted
# on /data takes that ownership when Docker creates it. keystored makes its
# files private (0600 files, 0700 directories). Mount a named volume on /data
# to keep the data across `docker rm`; an anonymous one is made otherwise.
COPY --chown=65532:65532 bin/data /data
USER 65532:65532
VOLUME ["/data"]

# 7001 serves clients (KeyStoreService, health, reflection); 7101 is Raft
# and forwarded writes, for the other nodes only: publish 7001 alone.
EXPOSE 7001 7101 7201 7201/udp

# keystored handles SIGTERM itself (docker stop): in-flight calls get 5 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/keystored"]
# A single node by default; any arguments given to `docker run` replace these,
# so repeat --data-dir and the 0.0.0.0 addresses when you pass your own.
CMD ["--data-dir", "/data", "--client-addr", "0.0.0.0:7001", "--peer-addr", "0.0.0.0:7101"]
