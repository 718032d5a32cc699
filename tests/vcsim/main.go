// vcsim-ready: govmomi's vCenter simulator (the Debian package's `simulator`), started
// for Ferry's tests as an independent vCenter. It serves the VPX model on 127.0.0.1,
// takes one snapshot of the first VM, and writes one JSON line to -ready naming what a
// test needs: the URL, the certificate's SHA-1 thumbprint, the VM and its disk.
//
// With -weak-key it keeps the simulator's own certificate (RSA 1024, as older ESXi hosts
// have); otherwise it serves a fresh RSA 2048 certificate for 127.0.0.1.
//
// Built by vsphere/tests/vcsim.rs with GOPATH=/usr/share/gocode GO111MODULE=off.
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type ready struct {
	URL          string `json:"url"`
	Thumbprint   string `json:"thumbprint"`
	VM           string `json:"vm"`
	VMName       string `json:"vm_name"`
	InstanceUUID string `json:"instance_uuid"`
	BiosUUID     string `json:"bios_uuid"`
	Disk         string `json:"disk"`
	Capacity     int64  `json:"capacity"`
	Snapshot     string `json:"snapshot"`
	SnapshotName string `json:"snapshot_name"`
	SnapshotDisk string `json:"snapshot_disk"`
	Host         string `json:"host"`
}

// Size of the first VM's disk.
const diskMiB = 32

// The only login the simulator accepts.
const (
	user     = "administrator@vsphere.local"
	password = "s3cr&t<pw>"
)

func certificate() (tls.Certificate, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "vcsim.ferry.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func thumbprint(der []byte) string {
	sum := sha1.Sum(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "vcsim-ready:", err)
	os.Exit(1)
}

func main() {
	readyFile := flag.String("ready", "", "write the JSON ready line here")
	weak := flag.Bool("weak-key", false, "keep the simulator's RSA 1024 certificate")
	flag.Parse()

	m := simulator.VPX()
	defer m.Remove()
	if err := m.Create(); err != nil {
		fail(err)
	}
	m.Service.TLS = new(tls.Config)
	if !*weak {
		cert, err := certificate()
		if err != nil {
			fail(err)
		}
		m.Service.TLS.Certificates = []tls.Certificate{cert}
	}
	// A login of our own: vcsim's default accepts any non-empty user and password.
	m.Service.Listen = &url.URL{User: url.UserPassword(user, password)}
	s := m.Service.NewServer()
	defer s.Close()

	ctx := context.Background()
	c, err := govmomi.NewClient(ctx, s.URL, true)
	if err != nil {
		fail(err)
	}
	finder := find.NewFinder(c.Client, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		fail(err)
	}
	finder.SetDatacenter(dc)
	vms, err := finder.VirtualMachineList(ctx, "*")
	if err != nil || len(vms) == 0 {
		fail(fmt.Errorf("no VM in the model: %v", err))
	}
	vm := vms[0]
	// A disk of a size the tests serve: 32 MiB.
	devices, err := vm.Device(ctx)
	if err != nil {
		fail(err)
	}
	for _, d := range devices {
		if disk, ok := d.(*types.VirtualDisk); ok {
			disk.CapacityInKB = diskMiB << 10
			disk.CapacityInBytes = diskMiB << 20
			if err := vm.EditDevice(ctx, disk); err != nil {
				fail(err)
			}
			break
		}
	}
	task, err := vm.CreateSnapshot(ctx, "forklift-precopy", "", false, false)
	if err != nil {
		fail(err)
	}
	if err := task.Wait(ctx); err != nil {
		fail(err)
	}
	var props mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"name", "config", "snapshot", "runtime"}, &props); err != nil {
		fail(err)
	}
	r := ready{
		URL:          s.URL.Scheme + "://" + s.URL.Host + s.URL.Path,
		Thumbprint:   thumbprint(s.Certificate().Raw),
		VM:           vm.Reference().Value,
		VMName:       props.Name,
		InstanceUUID: props.Config.InstanceUuid,
		BiosUUID:     props.Config.Uuid,
	}
	for _, d := range props.Config.Hardware.Device {
		if disk, ok := d.(*types.VirtualDisk); ok {
			if b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
				r.Disk = b.GetVirtualDeviceFileBackingInfo().FileName
			}
			r.Capacity = disk.CapacityInBytes
			break
		}
	}
	if props.Runtime.Host != nil {
		h := object.NewHostSystem(c.Client, *props.Runtime.Host)
		if name, err := h.ObjectName(ctx); err == nil {
			r.Host = name
		}
	}
	if props.Snapshot != nil && len(props.Snapshot.RootSnapshotList) > 0 {
		root := props.Snapshot.RootSnapshotList[0]
		r.Snapshot = root.Snapshot.Value
		r.SnapshotName = root.Name
		var snap mo.VirtualMachineSnapshot
		if err := c.RetrieveOne(ctx, root.Snapshot, []string{"config"}, &snap); err == nil {
			for _, d := range snap.Config.Hardware.Device {
				if disk, ok := d.(*types.VirtualDisk); ok {
					if b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
						r.SnapshotDisk = b.GetVirtualDeviceFileBackingInfo().FileName
					}
					break
				}
			}
		}
	}
	_ = c.Logout(ctx)
	line, _ := json.Marshal(r)
	tmp := *readyFile + ".tmp"
	if err := os.WriteFile(tmp, append(line, '\n'), 0o644); err != nil {
		fail(err)
	}
	if err := os.Rename(tmp, *readyFile); err != nil {
		fail(err)
	}
	select {}
}
