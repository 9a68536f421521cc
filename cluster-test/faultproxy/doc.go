// Package faultproxy is a fault-injecting TCP proxy for keystore's fault
// tests. The harness puts one Proxy on every directed peer link (n1→n2,
// n2→n1, ...) and tells each node that its peers live at the proxies'
// addresses, so partitions — full, one-direction, partial — and slow or
// flaky links need no root and no packet filter.
//
// A Proxy is in one mode at a time, switchable at any moment from any
// goroutine:
//
//   - Pass forwards both directions.
//   - Drop is a blackhole, like a partition: bytes read from either side are
//     discarded, nothing is written, and connections stay open, so the peers
//     must notice by their own timeouts. New connections are accepted and
//     never connected to the target.
//   - Delay forwards each chunk after base + uniform[0, jitter), in order:
//     each direction is a FIFO queue, so bytes are never reordered.
//   - DropFraction forwards, but blackholes each new connection with a
//     seeded probability: a flaky link.
//
// Reset is an action, not a mode: it cuts every connection now (with a TCP
// RST) and then passes.
//
// A connection that was blackholed, or lived through a Drop, may have lost
// bytes from the middle of its stream, so it is never forwarded again:
// switching to any forwarding mode (Pass, Delay, DropFraction, Reset)
// closes it, and the peers reconnect cleanly.
//
// Only loopback addresses are accepted: the proxy is a test tool.
//
// The API is the one the fault harness asked for (New, Start, Close and the
// mode methods); there is no Config because nothing in it needs tuning, and
// no logger because every event it could log is counted in Stats.
package faultproxy
