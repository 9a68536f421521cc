package server

// peerBook chooses the address this node dials a member at
// (raftnode.Config.Resolve): a route given for the member's name wins
// (a proxy or NAT in between), then the log's address.
type peerBook struct {
	routes map[string]string
}

func (b *peerBook) resolve(id uint64, name, addr string) string {
	if r, ok := b.routes[name]; ok && name != "" {
		return r
	}
	return addr
}
