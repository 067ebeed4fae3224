package pidns

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMarkedDirectoriesAreOursOnlyFromOurNamespace(t *testing.T) {
	dir := t.TempDir()
	if Ours(dir) {
		t.Fatal("an unmarked directory is ours")
	}
	if err := Mark(dir); err != nil {
		t.Fatal(err)
	}
	if !Ours(dir) || Own() == "unknown" {
		t.Fatalf("a directory marked here is not ours (namespace %q)", Own())
	}
	if err := os.WriteFile(filepath.Join(dir, markFile), []byte("pid:[1]"), 0o600); err != nil {
		t.Fatal(err)
	}
	if Ours(dir) {
		t.Fatal("a directory marked in another pid namespace is ours")
	}
}
