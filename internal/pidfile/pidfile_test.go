package pidfile

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestWriteReadRemove(t *testing.T) {
	path := filepath.Join(t.TempDir(), "baton.pid")
	if err := Write(path); err != nil {
		t.Fatal(err)
	}
	pid, err := Read(path)
	if err != nil || pid != os.Getpid() {
		t.Fatalf("Read = %d, %v; want %d", pid, err, os.Getpid())
	}
	if err := RemoveIfOurs(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("pidfile still there")
	}
}

func TestRemoveLeavesAnotherMastersPidfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "baton.pid")
	os.WriteFile(path, []byte("1\n"), 0o644)
	RemoveIfOurs(path)
	if _, err := os.Stat(path); err != nil {
		t.Fatal("removed a pidfile that names another process")
	}
}

func TestStaleAndForeignPidfilesDoNotBlock(t *testing.T) {
	dir := t.TempDir()
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleep.Process.Kill(); sleep.Wait() }()
	for name, content := range map[string]string{
		"dead":    "999999999\n",
		"garbage": "not a pid",
		"foreign": strconv.Itoa(sleep.Process.Pid), // alive, but not baton
	} {
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(content), 0o644)
		if err := Check(path); err != nil {
			t.Errorf("%s pidfile: %v, want no error", name, err)
		}
	}
}

func TestLiveBatonMasterBlocks(t *testing.T) {
	dir := t.TempDir()
	// A process whose argv[0] is "baton" stands in for a live master.
	fake := exec.Command("sleep", "30")
	fake.Args[0] = "baton"
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { fake.Process.Kill(); fake.Wait() }()
	// Start returns before the child has exec'd; until then its cmdline
	// is the test binary's.
	cmdline := fmt.Sprintf("/proc/%d/cmdline", fake.Process.Pid)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if data, _ := os.ReadFile(cmdline); strings.HasPrefix(string(data), "baton\x00") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stand-in master never exec'd")
		}
	}
	path := filepath.Join(dir, "baton.pid")
	os.WriteFile(path, []byte(strconv.Itoa(fake.Process.Pid)), 0o644)
	err := Check(path)
	if err == nil || !strings.Contains(err.Error(), strconv.Itoa(fake.Process.Pid)) {
		t.Fatalf("Check = %v, want a refusal naming the pid", err)
	}
}

func TestWriteIntoMissingDirectoryFails(t *testing.T) {
	err := Write(filepath.Join(t.TempDir(), "missing", "baton.pid"))
	if err == nil || !strings.Contains(err.Error(), "cannot write") {
		t.Fatalf("err = %v", err)
	}
}
