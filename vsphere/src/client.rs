//! The logged-in client and its lookups.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::cbt::ChangedAreasPage;
use crate::soap::{self, DiskDevice, MoRef, ObjectContent, ResponseError, ServiceContent};
use crate::task::{
    CutoverPowerOff, DiskChangeId, PowerOffStarted, PowerState, TaskFault, TaskInfo, TaskKind,
    TaskRef, TaskState,
};
use crate::tls::TlsPolicy;
use crate::transport::{ClientOptions, Transport, parse_endpoint};
use crate::xml::Element;
use crate::{Error, MAX_DATACENTERS, MAX_RECENT_TASKS, MAX_RETRIEVE_OBJECTS, MIN_POLL_INTERVAL};

/// The vim25 version used for the first call, before the server has told us its own.
/// Every vCenter and ESXi from 6.7 on accepts it.
pub const BOOTSTRAP_VIM_VERSION: &str = "6.7";

/// A VM found by UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    /// The moref, e.g. `vm-123`.
    pub moref: String,
    /// The display name.
    pub name: String,
    /// `runtime.powerState`: `poweredOn`, `poweredOff` or `suspended`.
    pub power_state: String,
    /// The name of the ESX host running it (`runtime.host` → `HostSystem.name`), when set
    /// and readable.
    pub host: Option<String>,
}

/// A virtual disk of a VM or of one of its snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The device key (stable across snapshots), e.g. 2000.
    pub key: i32,
    /// The datastore path, e.g. `[ds1] vm/vm-000001.vmdk`.
    pub file_name: String,
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// The CBT change ID of this disk state, when CBT is on.
    pub change_id: Option<String>,
    /// The datastore's name, from the file name's `[ds1]` prefix.
    pub datastore: Option<String>,
    /// The backing type, e.g. `VirtualDiskFlatVer2BackingInfo`.
    pub backing: Option<String>,
}

impl Disk {
    fn from_device(d: &DiskDevice, file_name: &str) -> Disk {
        Disk {
            key: d.key,
            file_name: file_name.to_string(),
            capacity_bytes: d.capacity_bytes,
            change_id: d.change_id.clone(),
            datastore: crate::task::datastore_of(file_name).map(str::to_string),
            backing: d.backing.clone(),
        }
    }

    /// The base disk's file ([`crate::base_disk_name`]): what a warm migration names as
    /// the DataVolume's `backingFile` (Forklift's `baseVolume(file, warm=true)`).
    pub fn base_file_name(&self) -> String {
        crate::task::base_disk_name(&self.file_name)
    }
}

/// A logged-in vSphere API session (vCenter or ESXi).
///
/// `Debug` shows the endpoint and the user, never the password or the session cookie.
pub struct Client {
    transport: Transport,
    user: String,
    password: Zeroizing<String>,
    content: ServiceContent,
    soap_action: String,
    session: Mutex<Option<Zeroizing<String>>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.transport.endpoint().authority())
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("session", &"<redacted>")
            .field("soap_action", &self.soap_action)
            .finish()
    }
}

fn version_ok(v: &str) -> bool {
    !v.is_empty() && v.len() <= 16 && v.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Map the faults of `QueryChangedDiskAreas` (see [`Client::query_changed_disk_areas`]).
fn changed_areas_error(e: Error, vm: &Vm, snapshot: &str, change_id: &str) -> Error {
    match e {
        Error::Fault { name, message, .. }
            if name == "FileFault"
                || (name == "InvalidArgument" && {
                    let m = message.to_ascii_lowercase();
                    m.contains("changeid") || m.contains("change id")
                }) =>
        {
            Error::ChangeIdInvalid {
                change_id: change_id.to_string(),
                message: format!(
                    "{name}: {message}; CBT was reset or the change ID is from another \
                     epoch, so the changed areas are unknown and a full copy is needed"
                ),
            }
        }
        Error::Fault { name, message, .. } if name == "ManagedObjectNotFound" => Error::NotFound {
            what: format!("snapshot {snapshot} of VM {} ({message})", vm.moref),
        },
        other => other,
    }
}

fn not_found_on_mo(e: Error, what: impl FnOnce() -> String) -> Error {
    match e {
        Error::Fault { ref name, .. } if name == "ManagedObjectNotFound" => {
            Error::NotFound { what: what() }
        }
        other => other,
    }
}

impl Client {
    /// Log in to `endpoint` (`https://vc.example/sdk`, `vc.example` or `vc.example:port`)
    /// with the default bounds and the proxy from `https_proxy` / `no_proxy`.
    pub async fn login(
        endpoint: &str,
        user: &str,
        password: &str,
        tls: &TlsPolicy,
    ) -> Result<Client, Error> {
        Self::login_with_options(endpoint, user, password, tls, ClientOptions::from_env()).await
    }

    /// [`Client::login`] with explicit bounds and proxy settings.
    pub async fn login_with_options(
        endpoint: &str,
        user: &str,
        password: &str,
        tls: &TlsPolicy,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let endpoint = parse_endpoint(endpoint)?;
        let transport = Transport::new(endpoint, tls, options)?;
        let bootstrap = format!("urn:vim25/{BOOTSTRAP_VIM_VERSION}");
        let resp = Self::call_raw(
            &transport,
            "RetrieveServiceContent",
            &bootstrap,
            &soap::retrieve_service_content(),
            None,
        )
        .await?;
        let content = soap::parse_service_content(&resp)?;
        let soap_action = match content.api_version.as_deref() {
            Some(v) if version_ok(v) => format!("urn:vim25/{v}"),
            _ => bootstrap,
        };
        tracing::debug!(
            endpoint = %transport.endpoint().authority(),
            api_type = content.api_type.as_deref().unwrap_or("?"),
            soap_action,
            "vSphere service content"
        );
        let client = Client {
            transport,
            user: user.to_string(),
            password: Zeroizing::new(password.to_string()),
            content,
            soap_action,
            session: Mutex::new(None),
        };
        client.do_login().await?;
        Ok(client)
    }

    /// The `SOAPAction` in use, `urn:vim25/<server apiVersion>`.
    pub fn soap_action(&self) -> &str {
        &self.soap_action
    }

    /// True when the endpoint is a vCenter (`apiType` `VirtualCenter`), false for ESXi.
    pub fn is_vcenter(&self) -> bool {
        self.content.api_type.as_deref() == Some("VirtualCenter")
    }

    async fn call_raw(
        transport: &Transport,
        operation: &str,
        soap_action: &str,
        body: &str,
        cookie: Option<&str>,
    ) -> Result<Element, Error> {
        let resp = transport.post(operation, soap_action, body, cookie).await?;
        let snippet = || resp.body.chars().take(200).collect::<String>();
        match (resp.status, soap::parse_response(&resp.body)) {
            (200, Ok(el)) => Ok(el),
            (_, Err(ResponseError::Fault(f))) => Err(Error::Fault {
                name: f.name,
                message: f.message,
                operation: operation.to_string(),
            }),
            (200, Err(ResponseError::Malformed(m))) => {
                Err(Error::Protocol(format!("{operation}: {m}")))
            }
            (status, _) => Err(Error::Http {
                status,
                operation: operation.to_string(),
                snippet: snippet(),
            }),
        }
    }

    async fn do_login(&self) -> Result<(), Error> {
        let body = soap::login(&self.content.session_manager, &self.user, &self.password);
        let resp = self
            .transport
            .post("Login", &self.soap_action, &body, None)
            .await?;
        match (resp.status, soap::parse_response(&resp.body)) {
            (200, Ok(_)) => {}
            (_, Err(ResponseError::Fault(f))) if f.name == "InvalidLogin" => {
                return Err(Error::Authentication {
                    user: self.user.clone(),
                    message: f.message,
                });
            }
            (_, Err(ResponseError::Fault(f))) => {
                return Err(Error::Fault {
                    name: f.name,
                    message: f.message,
                    operation: "Login".into(),
                });
            }
            (200, Err(ResponseError::Malformed(m))) => {
                return Err(Error::Protocol(format!("Login: {m}")));
            }
            (status, _) => {
                return Err(Error::Http {
                    status,
                    operation: "Login".into(),
                    snippet: resp.body.chars().take(200).collect(),
                });
            }
        }
        let cookie = resp.session_cookie.ok_or_else(|| {
            Error::Protocol(format!(
                "Login: no {} cookie in the reply",
                crate::SESSION_COOKIE
            ))
        })?;
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(Zeroizing::new(cookie));
        tracing::debug!(user = %self.user, "logged in to vSphere");
        Ok(())
    }

    fn cookie(&self) -> Option<Zeroizing<String>> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One authenticated call. On `NotAuthenticated` (the session expired, F8) log in
    /// again once and repeat the call once.
    async fn invoke(&self, operation: &str, body: &str) -> Result<Element, Error> {
        let first = Self::call_raw(
            &self.transport,
            operation,
            &self.soap_action,
            body,
            self.cookie().as_deref().map(String::as_str),
        )
        .await;
        match first {
            Err(e) if e.is_not_authenticated() => {
                tracing::info!(
                    operation,
                    "vSphere session expired (NotAuthenticated); logging in again"
                );
                self.do_login().await?;
                Self::call_raw(
                    &self.transport,
                    operation,
                    &self.soap_action,
                    body,
                    self.cookie().as_deref().map(String::as_str),
                )
                .await
            }
            other => other,
        }
    }

    /// RetrievePropertiesEx (+ ContinueRetrievePropertiesEx for further pages), at most
    /// `limit` objects.
    async fn retrieve(&self, body: &str, limit: usize) -> Result<Vec<ObjectContent>, Error> {
        let mut resp = self.invoke("RetrievePropertiesEx", body).await?;
        let mut out = Vec::new();
        loop {
            let page = soap::parse_retrieve_result(&resp)
                .map_err(|m| Error::Protocol(format!("RetrievePropertiesEx: {m}")))?;
            out.extend(page.objects);
            if out.len() > limit {
                return Err(Error::Protocol(format!(
                    "RetrievePropertiesEx returned more than {limit} objects"
                )));
            }
            let Some(token) = page.token else { break };
            let body = soap::continue_retrieve(&self.content.property_collector, &token);
            resp = self.invoke("ContinueRetrievePropertiesEx", &body).await?;
        }
        Ok(out)
    }

    async fn props(&self, obj: &MoRef, paths: &[&str]) -> Result<ObjectContent, Error> {
        let body = soap::retrieve_properties(
            &self.content.property_collector,
            &obj.kind,
            std::slice::from_ref(obj),
            paths,
        );
        let objs = self
            .retrieve(&body, 1)
            .await
            .map_err(|e| not_found_on_mo(e, || format!("{} {}", obj.kind, obj.value)))?;
        objs.into_iter()
            .find(|o| o.obj.value == obj.value)
            .ok_or_else(|| Error::NotFound {
                what: format!("{} {}", obj.kind, obj.value),
            })
    }

    async fn datacenters(&self) -> Result<Vec<MoRef>, Error> {
        let body =
            soap::list_datacenters(&self.content.property_collector, &self.content.root_folder);
        let objs = self.retrieve(&body, MAX_DATACENTERS).await?;
        Ok(objs
            .into_iter()
            .map(|o| o.obj)
            .filter(|o| o.kind == "Datacenter")
            .collect())
    }

    async fn find_vm_moref(&self, uuid: &str) -> Result<MoRef, Error> {
        let dcs = self.datacenters().await?;
        for dc in &dcs {
            let body = soap::find_by_uuid(&self.content.search_index, Some(dc), uuid, true, false);
            let resp = self.invoke("FindByUuid", &body).await?;
            if let Some(vm) = soap::parse_morefs(&resp).into_iter().next() {
                tracing::debug!(uuid, vm = %vm.value, datacenter = %dc.value, "found VM by instance UUID");
                return Ok(MoRef::new("VirtualMachine", &vm.value));
            }
        }
        let mut matches: BTreeSet<String> = BTreeSet::new();
        for dc in &dcs {
            let body = soap::find_by_uuid(&self.content.search_index, Some(dc), uuid, false, true);
            let resp = match self.invoke("FindAllByUuid", &body).await {
                Ok(r) => r,
                Err(Error::Fault { name, .. }) if name == "MethodNotFound" => {
                    return self.find_vm_moref_by_bios_uuid_one(&dcs, uuid).await;
                }
                Err(e) => return Err(e),
            };
            matches.extend(soap::parse_morefs(&resp).into_iter().map(|m| m.value));
            if matches.len() > MAX_DATACENTERS {
                break;
            }
        }
        let mut it = matches.iter();
        match (it.next(), it.next()) {
            (None, _) => Err(Error::NotFound {
                what: format!("VM with UUID {uuid}"),
            }),
            (Some(v), None) => {
                tracing::debug!(uuid, vm = %v, "found VM by BIOS UUID");
                Ok(MoRef::new("VirtualMachine", v))
            }
            _ => Err(Error::Ambiguous {
                what: format!("BIOS UUID {uuid}"),
                candidates: matches.into_iter().collect(),
                hint: "use the instance UUID or the moref",
            }),
        }
    }

    /// Older vCenter and ESXi have no `FindAllByUuid`: `FindByUuid` with
    /// `instanceUuid=false` answers one VM per datacenter, so a BIOS UUID shared by VMs
    /// in one datacenter cannot be detected there (across datacenters it still is).
    async fn find_vm_moref_by_bios_uuid_one(
        &self,
        dcs: &[MoRef],
        uuid: &str,
    ) -> Result<MoRef, Error> {
        tracing::warn!(
            uuid,
            "this server has no FindAllByUuid (older vCenter/ESXi); looking the BIOS UUID up with FindByUuid, which cannot tell whether several VMs in one datacenter share it"
        );
        let mut matches: BTreeSet<String> = BTreeSet::new();
        for dc in dcs {
            let body = soap::find_by_uuid(&self.content.search_index, Some(dc), uuid, false, false);
            let resp = self.invoke("FindByUuid", &body).await?;
            matches.extend(soap::parse_morefs(&resp).into_iter().map(|m| m.value));
        }
        let mut it = matches.iter();
        match (it.next(), it.next()) {
            (None, _) => Err(Error::NotFound {
                what: format!("VM with UUID {uuid}"),
            }),
            (Some(v), None) => Ok(MoRef::new("VirtualMachine", v)),
            _ => Err(Error::Ambiguous {
                what: format!("BIOS UUID {uuid}"),
                candidates: matches.into_iter().collect(),
                hint: "use the instance UUID or the moref",
            }),
        }
    }

    /// Find a VM by UUID in every datacenter: first as an instance UUID
    /// (`FindByUuid`, `instanceUuid=true`), then as a BIOS UUID (`FindAllByUuid`,
    /// `instanceUuid=false`). BIOS UUIDs are not unique (F9): two different VMs matching
    /// → [`Error::Ambiguous`]. No match → [`Error::NotFound`].
    pub async fn find_vm(&self, uuid: &str) -> Result<Vm, Error> {
        let vm = self.find_vm_moref(uuid).await?;
        let o = self
            .props(&vm, &["name", "runtime.powerState", "runtime.host"])
            .await?;
        let host = match o.prop_moref("runtime.host") {
            Some(h) => match self.host_name(&h).await {
                Ok(name) => name,
                Err(e) => {
                    tracing::warn!(host = %h.value, error = %e, "cannot read the ESX host name");
                    None
                }
            },
            None => None,
        };
        let out = Vm {
            moref: vm.value,
            name: o.prop_text("name").unwrap_or_default().to_string(),
            power_state: o
                .prop_text("runtime.powerState")
                .unwrap_or_default()
                .to_string(),
            host,
        };
        tracing::info!(vm = %out.moref, name = %out.name, power_state = %out.power_state,
            host = out.host.as_deref().unwrap_or("-"), "found VM");
        Ok(out)
    }

    /// Find a VM by its name (the seed's plans name VMs): every VM below the root
    /// folder is listed with its name and instance UUID; exactly one must match, and is
    /// then found by that UUID ([`Client::find_vm`]). None → [`Error::NotFound`];
    /// several (names are unique per folder only) → [`Error::Ambiguous`].
    pub async fn find_vm_by_name(&self, name: &str) -> Result<(Vm, String), Error> {
        let body = soap::list_vms(&self.content.property_collector, &self.content.root_folder);
        let objs = self.retrieve(&body, crate::MAX_RETRIEVE_OBJECTS).await?;
        let mut found: Vec<(String, String)> = objs
            .iter()
            .filter(|o| o.obj.kind == "VirtualMachine" && o.prop_text("name") == Some(name))
            .map(|o| {
                (
                    o.obj.value.clone(),
                    o.prop_text("config.instanceUuid")
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        found.sort();
        match found.as_slice() {
            [] => Err(Error::NotFound {
                what: format!("VM named {name:?}"),
            }),
            [(moref, uuid)] if !uuid.is_empty() => {
                tracing::debug!(name, vm = %moref, uuid = %uuid, "found VM by name");
                Ok((self.find_vm(uuid).await?, uuid.clone()))
            }
            [(moref, _)] => Err(Error::Protocol(format!(
                "VM {moref} named {name:?} has no config.instanceUuid"
            ))),
            _ => Err(Error::Ambiguous {
                what: format!("VM name {name:?}"),
                candidates: found.into_iter().map(|(m, _)| m).collect(),
                hint: "give the VM's instance UUID as its id",
            }),
        }
    }

    async fn vm_disks_and_snapshots(
        &self,
        vm: &Vm,
    ) -> Result<(Vec<DiskDevice>, Vec<soap::SnapshotNode>), Error> {
        let mo = MoRef::new("VirtualMachine", &vm.moref);
        let o = self
            .props(&mo, &["config.hardware.device", "snapshot"])
            .await?;
        let disks = match o.prop("config.hardware.device") {
            Some(v) => soap::parse_disks(v)?,
            None => Vec::new(),
        };
        let snaps = match o.prop("snapshot") {
            Some(v) => soap::parse_snapshot_tree(v)?,
            None => Vec::new(),
        };
        Ok((disks, snaps))
    }

    async fn snapshot_devices(
        &self,
        snapshots: &[String],
    ) -> Result<Vec<(String, Vec<DiskDevice>)>, Error> {
        if snapshots.is_empty() {
            return Ok(Vec::new());
        }
        let objs: Vec<MoRef> = snapshots
            .iter()
            .map(|s| MoRef::new("VirtualMachineSnapshot", s))
            .collect();
        let body = soap::retrieve_properties(
            &self.content.property_collector,
            "VirtualMachineSnapshot",
            &objs,
            &["config.hardware.device"],
        );
        let res = self
            .retrieve(&body, MAX_RETRIEVE_OBJECTS)
            .await
            .map_err(|e| not_found_on_mo(e, || format!("snapshot among {snapshots:?}")))?;
        // Keep the order of the request (the tree order), not the server's.
        let mut out = Vec::new();
        for s in snapshots {
            if let Some(o) = res.iter().find(|o| &o.obj.value == s) {
                let devs = match o.prop("config.hardware.device") {
                    Some(v) => soap::parse_disks(v)?,
                    None => Vec::new(),
                };
                out.push((s.clone(), devs));
            }
        }
        Ok(out)
    }

    /// Find the disk whose backing file is `backing_file` (e.g. `[ds1] vm/vm.vmdk`): in the
    /// VM's current devices, then in each snapshot's devices (tree order), then along the
    /// parent-backing chains of those disks (at most [`crate::MAX_PARENT_CHAIN`] parents
    /// each). The returned [`Disk`] has the matched file name and the key, capacity and
    /// change ID of the device where it matched. No match → [`Error::NotFound`] naming
    /// the file.
    pub async fn find_disk(&self, vm: &Vm, backing_file: &str) -> Result<Disk, Error> {
        let (current, snaps) = self.vm_disks_and_snapshots(vm).await?;
        if let Some(d) = current.iter().find(|d| d.file_name == backing_file) {
            return Ok(Disk::from_device(d, backing_file));
        }
        let ids: Vec<String> = snaps.iter().map(|s| s.moref.clone()).collect();
        let snap_devs = self.snapshot_devices(&ids).await?;
        for (snap, devs) in &snap_devs {
            if let Some(d) = devs.iter().find(|d| d.file_name == backing_file) {
                tracing::debug!(file = backing_file, snapshot = %snap, "disk found in the snapshot tree");
                return Ok(Disk::from_device(d, backing_file));
            }
        }
        let all = current
            .iter()
            .chain(snap_devs.iter().flat_map(|(_, d)| d.iter()));
        for d in all {
            if d.parents.iter().any(|p| p == backing_file) {
                tracing::debug!(
                    file = backing_file,
                    key = d.key,
                    "disk found in a parent-backing chain"
                );
                return Ok(Disk::from_device(d, backing_file));
            }
        }
        Err(Error::NotFound {
            what: format!("disk {backing_file:?} on VM {}", vm.moref),
        })
    }

    /// The moref of the snapshot of `vm` that `reference` names, as govmomi's
    /// `VirtualMachine.FindSnapshot` (which CDI uses for IMPORTER_CURRENT_CHECKPOINT)
    /// resolves it: a moref, a name, or a path of names from a root (`base/warm-2`).
    /// None → [`Error::NotFound`]; several → [`Error::Ambiguous`] naming them.
    pub async fn find_snapshot(&self, vm: &Vm, reference: &str) -> Result<String, Error> {
        let mo = MoRef::new("VirtualMachine", &vm.moref);
        let o = self.props(&mo, &["snapshot"]).await?;
        let snaps = match o.prop("snapshot") {
            Some(v) => soap::parse_snapshot_tree(v)?,
            None => Vec::new(),
        };
        resolve_snapshot(&snaps, reference, &vm.moref)
    }

    /// The same disk (same device key) as it is in snapshot `snapshot_moref` of `vm`,
    /// with that snapshot's file (e.g. `[ds] vm/vm-000001.vmdk`) and change ID. A snapshot
    /// that is not in the VM's tree, or a disk not in the snapshot → [`Error::NotFound`].
    pub async fn snapshot_disk(
        &self,
        vm: &Vm,
        snapshot_moref: &str,
        disk: &Disk,
    ) -> Result<Disk, Error> {
        let d = self.snapshot_device(vm, snapshot_moref, disk.key).await?;
        Ok(Disk::from_device(&d, &d.file_name))
    }

    /// The disks of snapshot `snapshot_moref`, which must be in `vm`'s tree.
    async fn snapshot_devices_of_vm(
        &self,
        vm: &Vm,
        snapshot_moref: &str,
    ) -> Result<Vec<DiskDevice>, Error> {
        let mo = MoRef::new("VirtualMachine", &vm.moref);
        let o = self.props(&mo, &["snapshot"]).await?;
        let snaps = match o.prop("snapshot") {
            Some(v) => soap::parse_snapshot_tree(v)?,
            None => Vec::new(),
        };
        if !snaps.iter().any(|s| s.moref == snapshot_moref) {
            return Err(Error::NotFound {
                what: format!("snapshot {snapshot_moref} of VM {}", vm.moref),
            });
        }
        let devs = self.snapshot_devices(&[snapshot_moref.to_string()]).await?;
        Ok(devs.into_iter().flat_map(|(_, d)| d.into_iter()).collect())
    }

    async fn snapshot_device(
        &self,
        vm: &Vm,
        snapshot_moref: &str,
        key: i32,
    ) -> Result<DiskDevice, Error> {
        self.snapshot_devices_of_vm(vm, snapshot_moref)
            .await?
            .into_iter()
            .find(|d| d.key == key)
            .ok_or_else(|| Error::NotFound {
                what: format!("disk key {key} in snapshot {snapshot_moref}"),
            })
    }

    /// The CBT change ID of disk `disk_key` in snapshot `snapshot_moref` of `vm` (the
    /// disk's `backing.changeId` in that snapshot's config): what a later delta passes
    /// to [`Client::query_changed_disk_areas`] to turn a previous-snapshot checkpoint
    /// into a change ID. An unknown snapshot or disk, or a disk without a change ID
    /// (CBT off when the snapshot was taken) → [`Error::NotFound`].
    pub async fn snapshot_change_id(
        &self,
        vm: &Vm,
        snapshot_moref: &str,
        disk_key: i32,
    ) -> Result<String, Error> {
        let d = self.snapshot_device(vm, snapshot_moref, disk_key).await?;
        d.change_id.ok_or_else(|| Error::NotFound {
            what: format!(
                "change ID of disk key {disk_key} in snapshot {snapshot_moref} of VM {} \
                 (CBT was not enabled when the snapshot was taken)",
                vm.moref
            ),
        })
    }

    /// One `QueryChangedDiskAreas` page, as the server returns it (at most about 2000
    /// areas on real vCenters): the areas of disk `disk_key` in snapshot
    /// `snapshot_moref` changed since `change_id` (`*` = every allocated area), from
    /// `start_offset`. The page is not checked here; use
    /// [`crate::for_each_changed_area_page`] to walk a whole disk safely.
    ///
    /// A refused change ID (`FileFault`, or `InvalidArgument` about the change ID: CBT
    /// was reset or the change ID is from another epoch) → [`Error::ChangeIdInvalid`];
    /// an unknown VM or snapshot → [`Error::NotFound`]; an empty change ID →
    /// [`Error::Config`]. An expired session is renewed once, like every call.
    pub async fn query_changed_disk_areas(
        &self,
        vm: &Vm,
        snapshot_moref: &str,
        disk_key: i32,
        start_offset: u64,
        change_id: &str,
    ) -> Result<ChangedAreasPage, Error> {
        if change_id.trim().is_empty() {
            return Err(Error::Config(
                "QueryChangedDiskAreas needs a change ID (or \"*\" for every allocated area)"
                    .into(),
            ));
        }
        let body = soap::query_changed_disk_areas(
            &MoRef::new("VirtualMachine", &vm.moref),
            &MoRef::new("VirtualMachineSnapshot", snapshot_moref),
            disk_key,
            start_offset,
            change_id,
        );
        let resp = self
            .invoke("QueryChangedDiskAreas", &body)
            .await
            .map_err(|e| changed_areas_error(e, vm, snapshot_moref, change_id))?;
        soap::parse_disk_change_info(&resp)
            .map_err(|m| Error::Protocol(format!("QueryChangedDiskAreas: {m}")))
    }

    async fn host_name(&self, host: &MoRef) -> Result<Option<String>, Error> {
        let h = MoRef::new("HostSystem", &host.value);
        let o = self.props(&h, &["name"]).await?;
        Ok(o.prop_text("name").map(str::to_string))
    }

    fn vm_mo(vm: &Vm) -> MoRef {
        MoRef::new("VirtualMachine", &vm.moref)
    }

    /// A `*_Task` call: its `Task` moref; `ManagedObjectNotFound` on `_this` → NotFound.
    async fn task_call(
        &self,
        operation: &str,
        body: &str,
        what: impl FnOnce() -> String,
    ) -> Result<TaskRef, Error> {
        let resp = self
            .invoke(operation, body)
            .await
            .map_err(|e| not_found_on_mo(e, what))?;
        let task = soap::parse_task_ref(&resp)
            .map_err(|m| Error::Protocol(format!("{operation}: {m}")))?;
        tracing::debug!(operation, task = %task, "vSphere task started");
        Ok(task)
    }

    /// Start `CreateSnapshot_Task` on `vm` (Forklift: name `forklift-migration-precopy`,
    /// description `Forklift Operator warm migration precopy`, `memory=false`,
    /// `quiesce=true`). The snapshot exists once the task succeeds: its moref is the
    /// task's result ([`Client::wait_snapshot_created`]). Before starting one after a
    /// restart, look for a task still under way with [`Client::running_task`], as
    /// Forklift does, so that no second snapshot is taken. An unknown VM →
    /// [`Error::NotFound`].
    pub async fn create_snapshot(
        &self,
        vm: &Vm,
        name: &str,
        description: &str,
        memory: bool,
        quiesce: bool,
    ) -> Result<TaskRef, Error> {
        let body = soap::create_snapshot(&Self::vm_mo(vm), name, description, memory, quiesce);
        let t = self
            .task_call("CreateSnapshot_Task", &body, || format!("VM {}", vm.moref))
            .await?;
        tracing::info!(vm = %vm.moref, snapshot = name, task = %t, memory, quiesce, "creating a snapshot");
        Ok(t)
    }

    /// The first task of `kind` in `vm`'s `recentTask` that is still `queued` or
    /// `running` (Forklift's `findRunningSnapshotTask`), or `None`. At most
    /// [`crate::MAX_RECENT_TASKS`] tasks are read; a task that vanished in the meantime is
    /// skipped. vcsim 0.24 keeps no `recentTask` on VMs and runs tasks within the call,
    /// so there it is always `None`.
    pub async fn running_task(&self, vm: &Vm, kind: TaskKind) -> Result<Option<TaskRef>, Error> {
        let o = self.props(&Self::vm_mo(vm), &["recentTask"]).await?;
        let tasks = match o.prop("recentTask") {
            Some(v) => soap::parse_moref_array(v, "recentTask", MAX_RECENT_TASKS)?,
            None => Vec::new(),
        };
        if tasks.is_empty() {
            return Ok(None);
        }
        let tasks: Vec<MoRef> = tasks
            .into_iter()
            .map(|t| MoRef::new("Task", &t.value))
            .collect();
        const PATHS: [&str; 3] = ["info.name", "info.descriptionId", "info.state"];
        let body =
            soap::retrieve_properties(&self.content.property_collector, "Task", &tasks, &PATHS);
        let objs = match self.retrieve(&body, MAX_RECENT_TASKS).await {
            Ok(objs) => objs,
            // A task left the server between the two reads: read them one by one.
            Err(Error::Fault { name, .. }) if name == "ManagedObjectNotFound" => {
                let mut objs = Vec::new();
                for t in &tasks {
                    match self.props(t, &PATHS).await {
                        Ok(o) => objs.push(o),
                        Err(Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                objs
            }
            Err(e) => return Err(e),
        };
        // In recentTask order (oldest first), not the server's.
        for t in &tasks {
            let Some(o) = objs.iter().find(|o| o.obj.value == t.value) else {
                continue;
            };
            let state = o.prop_text("info.state").and_then(TaskState::parse);
            if matches!(state, Some(TaskState::Queued | TaskState::Running))
                && kind.matches(o.prop_text("info.name"), o.prop_text("info.descriptionId"))
            {
                tracing::info!(vm = %vm.moref, task = %t.value, ?kind, "found a task still under way");
                return Ok(Some(TaskRef::new(&t.value)));
            }
        }
        Ok(None)
    }

    /// The task's `info` (`RetrievePropertiesEx` on `Task.info`). A task the server no
    /// longer has → [`Error::NotFound`]; a malformed `TaskInfo` (no or unknown `state`, a
    /// `result` that is not a moref, …) → [`Error::Protocol`] naming what is wrong.
    pub async fn task_info(&self, task: &TaskRef) -> Result<TaskInfo, Error> {
        let o = self
            .props(&MoRef::new("Task", &task.moref), &["info"])
            .await?;
        let val = o.prop("info").ok_or_else(|| {
            Error::Protocol(format!(
                "RetrievePropertiesEx: task {task} has no info{}",
                o.missing
                    .iter()
                    .find(|(p, _)| p == "info")
                    .map(|(_, f)| format!(" ({f})"))
                    .unwrap_or_default()
            ))
        })?;
        soap::parse_task_info(val, task).map_err(|m| Error::Protocol(format!("task {task}: {m}")))
    }

    /// Poll [`Client::task_info`] every `interval` (at least [`crate::MIN_POLL_INTERVAL`])
    /// until the task is done. `success` → its info; `error` → [`Error::TaskFailed`]
    /// naming the fault; still not done after `timeout` → [`Error::Timeout`].
    pub async fn wait_task(
        &self,
        task: &TaskRef,
        interval: Duration,
        timeout: Duration,
    ) -> Result<TaskInfo, Error> {
        let interval = interval.max(MIN_POLL_INTERVAL);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let info = self.task_info(task).await?;
            match info.state {
                TaskState::Success => return Ok(info),
                TaskState::Error => {
                    let fault = info.error.clone().unwrap_or(TaskFault {
                        name: "UnknownFault".into(),
                        message: String::new(),
                    });
                    return Err(Error::TaskFailed {
                        task: task.moref.clone(),
                        operation: info
                            .name
                            .or(info.description_id)
                            .unwrap_or_else(|| "?".into()),
                        fault: fault.name,
                        message: fault.message,
                    });
                }
                TaskState::Queued | TaskState::Running => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    operation: format!(
                        "waiting for task {task} ({}, {}{})",
                        info.name.as_deref().unwrap_or("?"),
                        info.state,
                        info.progress.map(|p| format!(" {p}%")).unwrap_or_default()
                    ),
                    after: timeout,
                });
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
        }
    }

    /// [`Client::wait_task`] for a `CreateSnapshot_Task`, then the new snapshot's moref
    /// (the task's result, as Forklift's `CheckSnapshotReady` reads it). A successful
    /// task without a `VirtualMachineSnapshot` result → [`Error::Protocol`].
    pub async fn wait_snapshot_created(
        &self,
        task: &TaskRef,
        interval: Duration,
        timeout: Duration,
    ) -> Result<String, Error> {
        let info = self.wait_task(task, interval, timeout).await?;
        match info.result {
            Some(r) if r.kind == "VirtualMachineSnapshot" || r.kind.is_empty() => Ok(r.value),
            Some(r) => Err(Error::Protocol(format!(
                "task {task} succeeded with a {} ({}), not a VirtualMachineSnapshot",
                r.kind, r.value
            ))),
            None => Err(Error::Protocol(format!(
                "task {task} succeeded without a result (expected the new snapshot)"
            ))),
        }
    }

    /// Start `RemoveSnapshot_Task` on snapshot `snapshot_moref` (Forklift:
    /// `remove_children=false`, `consolidate=true`). A snapshot that no longer exists →
    /// [`Error::NotFound`] (Forklift takes that as already removed).
    pub async fn remove_snapshot(
        &self,
        snapshot_moref: &str,
        remove_children: bool,
        consolidate: bool,
    ) -> Result<TaskRef, Error> {
        let body = soap::remove_snapshot(
            &MoRef::new("VirtualMachineSnapshot", snapshot_moref),
            remove_children,
            consolidate,
        );
        let t = self
            .task_call("RemoveSnapshot_Task", &body, || {
                format!("snapshot {snapshot_moref}")
            })
            .await?;
        tracing::info!(snapshot = snapshot_moref, task = %t, remove_children, consolidate, "removing a snapshot");
        Ok(t)
    }

    /// The change ID of every virtual disk in snapshot `snapshot_moref` of `vm`, as
    /// Forklift's `GetSnapshotDeltas` (`StoreSnapshotDeltas`) records them: disks with a
    /// FlatVer2, SparseVer2, RawDiskMappingVer1 or RawDiskVer2 backing (others, e.g.
    /// SeSparse, are skipped as Forklift skips them), each named by its base disk
    /// ([`crate::base_disk_name`]). The snapshot must be in the VM's tree
    /// ([`Error::NotFound`] otherwise). Parsed like [`Client::snapshot_change_id`].
    pub async fn snapshot_change_ids(
        &self,
        vm: &Vm,
        snapshot_moref: &str,
    ) -> Result<Vec<DiskChangeId>, Error> {
        let devs = self.snapshot_devices_of_vm(vm, snapshot_moref).await?;
        let mut out = Vec::new();
        for d in devs {
            if !d
                .backing
                .as_deref()
                .is_some_and(|b| soap::CBT_BACKINGS.contains(&b))
            {
                tracing::debug!(
                    key = d.key,
                    backing = d.backing.as_deref().unwrap_or("-"),
                    "disk backing without a change ID Forklift records; skipped"
                );
                continue;
            }
            out.push(DiskChangeId {
                backing_file: crate::task::base_disk_name(&d.file_name),
                snapshot_file: d.file_name,
                device_key: d.key,
                change_id: d.change_id,
            });
        }
        Ok(out)
    }

    /// The VM's `runtime.powerState`, read now. A value other than poweredOn, poweredOff
    /// or suspended (or none) → [`Error::Protocol`].
    pub async fn power_state(&self, vm: &Vm) -> Result<PowerState, Error> {
        let o = self
            .props(&Self::vm_mo(vm), &["runtime.powerState"])
            .await?;
        let s = o
            .prop_text("runtime.powerState")
            .ok_or_else(|| Error::Protocol(format!("VM {} has no runtime.powerState", vm.moref)))?;
        PowerState::parse(s).ok_or_else(|| {
            Error::Protocol(format!(
                "VM {}: runtime.powerState {s:?} is not poweredOn, poweredOff or suspended",
                vm.moref
            ))
        })
    }

    /// Poll [`Client::power_state`] every `interval` (at least
    /// [`crate::MIN_POLL_INTERVAL`]) until it is `want` (Forklift's WaitForPowerOff);
    /// [`Error::Timeout`] after `timeout`.
    pub async fn wait_power_state(
        &self,
        vm: &Vm,
        want: PowerState,
        interval: Duration,
        timeout: Duration,
    ) -> Result<(), Error> {
        let interval = interval.max(MIN_POLL_INTERVAL);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now_state = self.power_state(vm).await?;
            if now_state == want {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    operation: format!(
                        "waiting for VM {} to be {want} (it is {now_state})",
                        vm.moref
                    ),
                    after: timeout,
                });
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
        }
    }

    /// `ShutdownGuest`: ask the guest OS to shut down (needs VMware Tools running). It
    /// returns at once; the VM is `poweredOff` when the guest is done
    /// ([`Client::wait_power_state`]). Without Tools → [`Error::Fault`]
    /// `ToolsUnavailable`; a VM that is not on → `InvalidPowerState`.
    pub async fn shutdown_guest(&self, vm: &Vm) -> Result<(), Error> {
        let body = soap::this_only("ShutdownGuest", &Self::vm_mo(vm));
        self.invoke("ShutdownGuest", &body)
            .await
            .map_err(|e| not_found_on_mo(e, || format!("VM {}", vm.moref)))?;
        tracing::info!(vm = %vm.moref, "guest shutdown requested");
        Ok(())
    }

    /// `PowerOffVM_Task`: a hard power-off (no guest shutdown). The task fails with
    /// `InvalidPowerState` when the VM is already off.
    pub async fn power_off(&self, vm: &Vm) -> Result<TaskRef, Error> {
        let body = soap::this_only("PowerOffVM_Task", &Self::vm_mo(vm));
        self.task_call("PowerOffVM_Task", &body, || format!("VM {}", vm.moref))
            .await
    }

    /// `PowerOnVM_Task` on the VM's own host. The task fails with `InvalidPowerState`
    /// when the VM is already on.
    pub async fn power_on(&self, vm: &Vm) -> Result<TaskRef, Error> {
        let body = soap::this_only("PowerOnVM_Task", &Self::vm_mo(vm));
        self.task_call("PowerOnVM_Task", &body, || format!("VM {}", vm.moref))
            .await
    }

    /// Stop the source VM for the cutover (Forklift's PowerOffSource).
    ///
    /// Already `poweredOff` → [`PowerOffStarted::AlreadyOff`] (nothing is sent, as
    /// Forklift). Otherwise `ShutdownGuest`. Forklift stops there: a guest without VMware
    /// Tools fails the step with the fault (`ToolsUnavailable`) and the VM stays on; that
    /// is [`CutoverPowerOff::GuestOnly`]. [`CutoverPowerOff::GuestThenHard`] then powers
    /// the VM off hard (`PowerOffVM_Task`) when the guest cannot be asked
    /// (`ToolsUnavailable`, `InvalidState`, or `InvalidPowerState` for a suspended VM),
    /// which can lose data the guest has not written: the choice is the caller's. A
    /// VM that turned off between the two calls is `AlreadyOff`.
    pub async fn power_off_for_cutover(
        &self,
        vm: &Vm,
        policy: CutoverPowerOff,
    ) -> Result<PowerOffStarted, Error> {
        if self.power_state(vm).await? == PowerState::PoweredOff {
            return Ok(PowerOffStarted::AlreadyOff);
        }
        let err = match self.shutdown_guest(vm).await {
            Ok(()) => return Ok(PowerOffStarted::GuestShutdown),
            Err(e) => e,
        };
        let fault = err.fault_name().unwrap_or_default().to_string();
        if fault == "InvalidPowerState" && self.power_state(vm).await? == PowerState::PoweredOff {
            return Ok(PowerOffStarted::AlreadyOff);
        }
        let fallback = matches!(
            fault.as_str(),
            "ToolsUnavailable" | "InvalidState" | "InvalidPowerState"
        );
        if policy == CutoverPowerOff::GuestThenHard && fallback {
            tracing::warn!(vm = %vm.moref, guest_fault = %fault,
                "the guest cannot be shut down; powering the VM off hard");
            let task = self.power_off(vm).await?;
            return Ok(PowerOffStarted::HardPowerOff {
                task,
                guest_fault: fault,
            });
        }
        Err(err)
    }

    /// The name of the ESX host running `vm` now (`runtime.host` → `HostSystem.name`),
    /// re-read on each call: DRS may move the VM between rounds. `None` when the VM has
    /// no host (not registered on one).
    pub async fn current_host(&self, vm: &Vm) -> Result<Option<String>, Error> {
        let o = self.props(&Self::vm_mo(vm), &["runtime.host"]).await?;
        match o.prop_moref("runtime.host") {
            Some(h) => self.host_name(&h).await,
            None => Ok(None),
        }
    }

    /// Every virtual disk of `vm` now (`config.hardware.device`, at most
    /// [`crate::MAX_DEVICES`] devices): key, current file (a delta while snapshots exist;
    /// [`Disk::base_file_name`] names the base disk), capacity, datastore name, backing
    /// type and change ID, in device order: one DiskImport per disk.
    pub async fn vm_disks(&self, vm: &Vm) -> Result<Vec<Disk>, Error> {
        let o = self
            .props(&Self::vm_mo(vm), &["config.hardware.device"])
            .await?;
        let devs = match o.prop("config.hardware.device") {
            Some(v) => soap::parse_disks(v)?,
            None => Vec::new(),
        };
        Ok(devs
            .iter()
            .map(|d| Disk::from_device(d, &d.file_name))
            .collect())
    }

    /// End the session. Errors are logged, not returned: the session expires anyway.
    pub async fn logout(self) {
        let body = soap::logout(&self.content.session_manager);
        let cookie = self.cookie();
        if let Err(e) = Self::call_raw(
            &self.transport,
            "Logout",
            &self.soap_action,
            &body,
            cookie.as_deref().map(String::as_str),
        )
        .await
        {
            tracing::debug!(error = %e, "vSphere logout failed");
        }
    }
}

/// [`Client::find_snapshot`]'s matching, on a tree flattened depth-first with depths
/// (`soap::parse_snapshot_tree`): every snapshot whose moref, name or path of names from
/// its root equals `reference`, counted once each.
pub fn resolve_snapshot(
    snaps: &[soap::SnapshotNode],
    reference: &str,
    vm: &str,
) -> Result<String, Error> {
    let mut path: Vec<&str> = Vec::new();
    let mut found: Vec<String> = Vec::new();
    for s in snaps {
        path.truncate(s.depth);
        path.push(&s.name);
        let matches = s.moref == reference
            || s.name == reference
            || (s.depth > 0 && path.join("/") == reference);
        if matches && !found.contains(&s.moref) {
            found.push(s.moref.clone());
        }
    }
    match found.len() {
        0 if snaps.is_empty() => Err(Error::NotFound {
            what: format!("snapshot {reference:?}: VM {vm} has no snapshots"),
        }),
        0 => Err(Error::NotFound {
            what: format!("snapshot {reference:?} of VM {vm}"),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(Error::Ambiguous {
            what: format!("snapshot name {reference:?} of VM {vm}"),
            candidates: found,
            hint: "give the snapshot's moref or its path from the root (parent/name)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(name: &str, message: &str) -> Error {
        Error::Fault {
            name: name.into(),
            message: message.into(),
            operation: "QueryChangedDiskAreas".into(),
        }
    }

    #[test]
    fn changed_areas_faults() {
        let vm = Vm {
            moref: "vm-1".into(),
            name: "a".into(),
            power_state: "poweredOn".into(),
            host: None,
        };
        let map = |e| changed_areas_error(e, &vm, "snapshot-2", "52 aa/9");
        for e in [
            fault("FileFault", "Error caused by file [ds] a/a-000001.vmdk"),
            fault(
                "InvalidArgument",
                "A specified parameter was not correct: changeId",
            ),
            fault("InvalidArgument", "invalid change ID"),
        ] {
            match map(e) {
                Error::ChangeIdInvalid { change_id, message } => {
                    assert_eq!(change_id, "52 aa/9");
                    assert!(message.contains("full copy"), "{message}");
                }
                other => panic!("expected ChangeIdInvalid, got {other:?}"),
            }
        }
        let e = map(fault(
            "InvalidArgument",
            "A specified parameter was not correct: deviceKey",
        ));
        assert!(
            matches!(&e, Error::Fault { name, .. } if name == "InvalidArgument"),
            "{e:?}"
        );
        let e = map(fault("ManagedObjectNotFound", "gone"));
        assert!(
            matches!(&e, Error::NotFound { what } if what.contains("snapshot-2") && what.contains("vm-1")),
            "{e:?}"
        );
        assert!(map(fault("NotAuthenticated", "x")).is_not_authenticated());
    }

    fn node(moref: &str, name: &str, depth: usize) -> soap::SnapshotNode {
        soap::SnapshotNode {
            moref: moref.into(),
            name: name.into(),
            depth,
        }
    }

    #[test]
    fn snapshots_resolve_by_moref_name_or_path_like_govmomi() {
        // base ─┬─ warm-1 ── warm-2
        //       └─ warm-2 (a second snapshot of the same name)
        let tree = [
            node("snapshot-1", "base", 0),
            node("snapshot-2", "warm-1", 1),
            node("snapshot-3", "warm-2", 2),
            node("snapshot-4", "warm-2", 1),
        ];
        for (reference, want) in [
            ("snapshot-3", "snapshot-3"),
            ("base", "snapshot-1"),
            ("warm-1", "snapshot-2"),
            ("base/warm-1/warm-2", "snapshot-3"),
            ("base/warm-2", "snapshot-4"),
        ] {
            assert_eq!(
                resolve_snapshot(&tree, reference, "vm-1").unwrap(),
                want,
                "{reference}"
            );
        }
        match resolve_snapshot(&tree, "warm-2", "vm-1") {
            Err(e @ Error::Ambiguous { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("snapshot-3") && text.contains("snapshot-4"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            resolve_snapshot(&tree, "nope", "vm-1"),
            Err(Error::NotFound { .. })
        ));
        let e = resolve_snapshot(&[], "base", "vm-1").unwrap_err();
        assert!(e.to_string().contains("has no snapshots"), "{e}");
    }
}
