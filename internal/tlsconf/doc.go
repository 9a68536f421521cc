// Package tlsconf builds TLS configurations for keystore's listeners and
// dialers from PEM files, and swaps in new certificates, keys and CAs
// without a restart.
//
// A Source holds the material read from its Files behind an atomic pointer.
// Its configurations pick the material in effect at the start of every
// handshake: ServerConfig returns a fresh per-handshake configuration from
// GetConfigForClient (certificate and client-CA pool of the moment), and
// ClientConfig presents the current client certificate and verifies the
// server in VerifyConnection against the current CA pool, because crypto/tls
// cannot swap the RootCAs or ClientCAs of a configuration in use.
// Connections already established keep the material they were made with.
//
// New material is taken in two ways, which can be combined: the daemon calls
// Source.Reload on SIGHUP, and Source.Watch polls the files' content (not
// their modification times, so a Kubernetes-style swap of a symlinked
// directory is seen). A reload that fails (unreadable file, garbage, a key
// that does not match the certificate, a CA file without certificates)
// keeps the material in effect.
//
// Identity: a peer (another member) is identified by its member name among
// the DNS SANs and the CommonName of its verified certificate, see
// PeerIdentity; a client by the CommonName of its verified certificate, as
// etcd does, see ClientIdentity.
package tlsconf
