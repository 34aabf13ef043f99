package main

// sysSendmmsg is sendmmsg(2)'s number, which the syscall package lacks
// here.
const sysSendmmsg = 269
