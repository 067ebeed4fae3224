//go:build containertier

// Package containertier is baton's container tier: its test (build tag
// containertier) builds examples/container/Dockerfile as shipped with
// rootful podman and runs the image, baton as PID 1, as `docker run` would:
// it serves, a HUP (podman kill -s HUP) reloads under load without a failed
// request, orphans are reaped (no zombie in the container's /proc), and
// `podman stop` is a lame-duck drain: /readyz 503 at once while requests
// still succeed for shutdown_delay, then the graceful drain and exit 0.
//
// Run it alone, as root, from the repository:
//
//	go test -tags containertier -count=1 -v -run '^TestContainerRecipe$' ./e2e/containertier/
//
// No container registry is reachable here, so the two images the Dockerfile
// starts FROM are made locally by scripts/container-tier/base-images (from
// the real-systemd tier's Debian 12 root filesystem and this machine's Go),
// in podman storage of the tier's own (/var/cache/baton-container-tier), so
// no other podman user's images are touched. It needs podman and runc
// (scripts/install-test-deps installs both): Debian 12's crun refuses this
// machine's hybrid cgroup layout. A machine where the container cannot run
// fails the test with the reason: it never skips.
package containertier
