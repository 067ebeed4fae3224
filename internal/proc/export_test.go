package proc

// GuardListeners is guardListeners, for the external tests' child process.
var GuardListeners = guardListeners
