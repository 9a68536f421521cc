// Package bugs holds deliberate bugs for proving that the fault tests catch
// them (checker efficacy). Each is a constant that is false unless keystore
// is built with its tag, so release builds compile the bugs out entirely:
//
//	bug_nofsync     the Raft log is written without fsync (ack before fsync)
//	bug_leasereads  linearizable Gets skip ReadIndex (lease-style local reads)
//	bug_localclock  apply stamps log time from the replica's own clock
//	bug_notoken     Complete does not check the claim's token
//
// `make cluster-test-bugs` builds with each tag and shows the suite failing.
package bugs
