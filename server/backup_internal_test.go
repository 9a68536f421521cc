package server

import (
	"testing"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
)

// TestBackupIsAdminOnly: a backup holds every namespace's records, so
// with a policy only an admin credential may take one.
func TestBackupIsAdminOnly(t *testing.T) {
	if !adminMethods[keystorev1.ClusterService_Backup_FullMethodName] || publicMethods[keystorev1.ClusterService_Backup_FullMethodName] {
		t.Fatal("ClusterService/Backup must be an admin method")
	}
}
