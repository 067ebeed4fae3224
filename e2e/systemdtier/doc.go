// Package systemdtier is baton's real-systemd test tier: its tests (build tag
// systemdtier) boot Debian 12's systemd as PID 1 of a container
// (systemd-nspawn -b), install the static baton binary and the units of
// contrib/systemd in it, and check what `systemctl start`, `reload`, `stop`,
// a crash of the main process, socket activation and `baton upgrade` do
// there.
//
// Run it alone, as root, from the repository:
//
//	go test -tags systemdtier -count=1 -v -run '^TestSystemdTier(Upgrade)?$' ./e2e/systemdtier/
//
// TestSystemdTierUpgrade checks `baton upgrade` under systemd (the in-place
// upgrade keeps the master's pid, so systemd follows it as a reload).
//
// It needs debootstrap and systemd-nspawn (scripts/install-test-deps installs
// both); the first run builds the root filesystem with
// scripts/systemd-tier/build-rootfs (about a minute), later runs reuse it. A
// machine where the container cannot boot fails the tests with the reason:
// they never skip.
package systemdtier
