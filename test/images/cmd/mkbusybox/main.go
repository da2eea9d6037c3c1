// Command mkbusybox writes the busybox test image (test/images/busybox) as an OCI image
// layout:
//
//	go run ./test/images/cmd/mkbusybox -o DIR [-tag busybox:latest] [-busybox /bin/busybox]
//	go run ./test/images/cmd/mkbusybox -rootfs DIR   # the unpacked filesystem instead
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/boxctl/boxctl/test/images/busybox"
)

func main() {
	var opts busybox.Options
	out := flag.String("o", "", "write an OCI image layout to this directory")
	rootfs := flag.String("rootfs", "", "write the unpacked filesystem to this (new) directory")
	flag.StringVar(&opts.Busybox, "busybox", busybox.DefaultBusybox, "static busybox binary")
	flag.StringVar(&opts.Tag, "tag", busybox.DefaultTag, "reference name in the layout")
	flag.Parse()
	if (*out == "") == (*rootfs == "") {
		fmt.Fprintln(os.Stderr, "mkbusybox: give exactly one of -o DIR or -rootfs DIR")
		os.Exit(2)
	}
	if *rootfs != "" {
		if err := busybox.WriteRootfs(*rootfs, opts); err != nil {
			fmt.Fprintln(os.Stderr, "mkbusybox:", err)
			os.Exit(1)
		}
		return
	}
	digest, err := busybox.BuildLayout(*out, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkbusybox:", err)
		os.Exit(1)
	}
	fmt.Println(digest)
}
