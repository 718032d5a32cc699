//! vim25 SOAP envelopes (hand-written templates) and typed readers for the responses.
//!
//! Requests follow the element order of the vim25 WSDL, which vCenter enforces. Readers
//! take the parsed [`Element`] tree and ignore every element they do not know.

use crate::xml::{self, Element, escape};

/// A managed object reference: `<obj type="VirtualMachine">vm-123</obj>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MoRef {
    /// The managed object type, e.g. `VirtualMachine`.
    pub kind: String,
    /// The moref value, e.g. `vm-123`.
    pub value: String,
}

impl MoRef {
    /// A reference of this type and value.
    pub fn new(kind: &str, value: &str) -> Self {
        MoRef {
            kind: kind.to_string(),
            value: value.to_string(),
        }
    }

    /// Read `<x type="T">value</x>`; `None` when the value is empty.
    pub fn from_element(e: &Element) -> Option<MoRef> {
        let value = e.text.trim();
        if value.is_empty() {
            return None;
        }
        // `type`, not `xsi:type` (vcsim writes `xsi:type` first).
        Some(MoRef {
            kind: e.plain_attr("type").unwrap_or_default().to_string(),
            value: value.into(),
        })
    }

    fn to_xml(&self, tag: &str) -> String {
        format!(
            r#"<{tag} type="{}">{}</{tag}>"#,
            escape(&self.kind),
            escape(&self.value)
        )
    }
}

/// Wrap a body element into a SOAP 1.1 envelope.
pub fn envelope(body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            r#"<soapenv:Body>{}</soapenv:Body></soapenv:Envelope>"#
        ),
        body
    )
}

/// `ServiceInstance.RetrieveServiceContent`.
pub fn retrieve_service_content() -> String {
    envelope(concat!(
        r#"<RetrieveServiceContent xmlns="urn:vim25">"#,
        r#"<_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>"#
    ))
}

/// `SessionManager.Login`.
pub fn login(session_manager: &MoRef, user: &str, password: &str) -> String {
    envelope(&format!(
        r#"<Login xmlns="urn:vim25">{}<userName>{}</userName><password>{}</password></Login>"#,
        session_manager.to_xml("_this"),
        escape(user),
        escape(password)
    ))
}

/// `SessionManager.Logout`.
pub fn logout(session_manager: &MoRef) -> String {
    envelope(&format!(
        r#"<Logout xmlns="urn:vim25">{}</Logout>"#,
        session_manager.to_xml("_this")
    ))
}

/// `SearchIndex.FindByUuid` (`all = false`) or `SearchIndex.FindAllByUuid` (`all = true`),
/// always with `vmSearch = true`.
pub fn find_by_uuid(
    search_index: &MoRef,
    datacenter: Option<&MoRef>,
    uuid: &str,
    instance_uuid: bool,
    all: bool,
) -> String {
    let method = if all { "FindAllByUuid" } else { "FindByUuid" };
    envelope(&format!(
        concat!(
            r#"<{m} xmlns="urn:vim25">{this}{dc}<uuid>{uuid}</uuid>"#,
            r#"<vmSearch>true</vmSearch><instanceUuid>{inst}</instanceUuid></{m}>"#
        ),
        m = method,
        this = search_index.to_xml("_this"),
        dc = datacenter
            .map(|d| d.to_xml("datacenter"))
            .unwrap_or_default(),
        uuid = escape(uuid),
        inst = instance_uuid,
    ))
}

fn prop_set(kind: &str, paths: &[&str]) -> String {
    let mut s = format!("<propSet><type>{}</type><all>false</all>", escape(kind));
    for p in paths {
        s.push_str(&format!("<pathSet>{}</pathSet>", escape(p)));
    }
    s.push_str("</propSet>");
    s
}

/// `PropertyCollector.RetrievePropertiesEx` reading `paths` of each object in `objs`
/// (all of type `kind`).
pub fn retrieve_properties(
    collector: &MoRef,
    kind: &str,
    objs: &[MoRef],
    paths: &[&str],
) -> String {
    let mut body = format!(
        r#"<RetrievePropertiesEx xmlns="urn:vim25">{}<specSet>{}"#,
        collector.to_xml("_this"),
        prop_set(kind, paths)
    );
    for o in objs {
        body.push_str(&format!(
            "<objectSet>{}<skip>false</skip></objectSet>",
            o.to_xml("obj")
        ));
    }
    body.push_str("</specSet><options></options></RetrievePropertiesEx>");
    envelope(&body)
}

/// `RetrievePropertiesEx` listing every `Datacenter` (with its `name`) below the root
/// folder, through nested folders (`Folder.childEntity`, recursively).
pub fn list_datacenters(collector: &MoRef, root_folder: &MoRef) -> String {
    envelope(&format!(
        concat!(
            r#"<RetrievePropertiesEx xmlns="urn:vim25">{this}<specSet>{props}"#,
            r#"<objectSet>{root}<skip>true</skip>"#,
            r#"<selectSet xsi:type="TraversalSpec"><name>visitFolders</name>"#,
            r#"<type>Folder</type><path>childEntity</path><skip>false</skip>"#,
            r#"<selectSet><name>visitFolders</name></selectSet></selectSet>"#,
            r#"</objectSet></specSet><options></options></RetrievePropertiesEx>"#
        ),
        this = collector.to_xml("_this"),
        props = prop_set("Datacenter", &["name"]),
        root = root_folder.to_xml("obj"),
    ))
}

/// `RetrievePropertiesEx` listing every `VirtualMachine` (its `name` and
/// `config.instanceUuid`) below the root folder: through nested folders
/// (`Folder.childEntity`) and each datacenter's VM folder (`Datacenter.vmFolder`), as
/// govmomi's finder walks the inventory.
pub fn list_vms(collector: &MoRef, root_folder: &MoRef) -> String {
    envelope(&format!(
        concat!(
            r#"<RetrievePropertiesEx xmlns="urn:vim25">{this}<specSet>{props}"#,
            r#"<objectSet>{root}<skip>true</skip>"#,
            r#"<selectSet xsi:type="TraversalSpec"><name>visitFolders</name>"#,
            r#"<type>Folder</type><path>childEntity</path><skip>false</skip>"#,
            r#"<selectSet><name>visitFolders</name></selectSet>"#,
            r#"<selectSet><name>dcToVmFolder</name></selectSet></selectSet>"#,
            r#"<selectSet xsi:type="TraversalSpec"><name>dcToVmFolder</name>"#,
            r#"<type>Datacenter</type><path>vmFolder</path><skip>false</skip>"#,
            r#"<selectSet><name>visitFolders</name></selectSet></selectSet>"#,
            r#"</objectSet></specSet><options></options></RetrievePropertiesEx>"#
        ),
        this = collector.to_xml("_this"),
        props = prop_set("VirtualMachine", &["name", "config.instanceUuid"]),
        root = root_folder.to_xml("obj"),
    ))
}

/// `PropertyCollector.ContinueRetrievePropertiesEx` for the next page.
pub fn continue_retrieve(collector: &MoRef, token: &str) -> String {
    envelope(&format!(
        r#"<ContinueRetrievePropertiesEx xmlns="urn:vim25">{}<token>{}</token></ContinueRetrievePropertiesEx>"#,
        collector.to_xml("_this"),
        escape(token)
    ))
}

/// `VirtualMachine.QueryChangedDiskAreas` for disk `device_key` of snapshot `snapshot`
/// of `vm`, from `start_offset`, relative to `change_id` (`*` = every allocated area).
pub fn query_changed_disk_areas(
    vm: &MoRef,
    snapshot: &MoRef,
    device_key: i32,
    start_offset: u64,
    change_id: &str,
) -> String {
    envelope(&format!(
        concat!(
            r#"<QueryChangedDiskAreas xmlns="urn:vim25">{this}{snap}"#,
            r#"<deviceKey>{key}</deviceKey><startOffset>{start}</startOffset>"#,
            r#"<changeId>{cid}</changeId></QueryChangedDiskAreas>"#
        ),
        this = vm.to_xml("_this"),
        snap = snapshot.to_xml("snapshot"),
        key = device_key,
        start = start_offset,
        cid = escape(change_id),
    ))
}

/// `VirtualMachine.CreateSnapshot_Task` (WSDL order: `_this`, `name`, `description`,
/// `memory`, `quiesce`).
pub fn create_snapshot(
    vm: &MoRef,
    name: &str,
    description: &str,
    memory: bool,
    quiesce: bool,
) -> String {
    envelope(&format!(
        concat!(
            r#"<CreateSnapshot_Task xmlns="urn:vim25">{this}<name>{name}</name>"#,
            r#"<description>{desc}</description><memory>{memory}</memory>"#,
            r#"<quiesce>{quiesce}</quiesce></CreateSnapshot_Task>"#
        ),
        this = vm.to_xml("_this"),
        name = escape(name),
        desc = escape(description),
        memory = memory,
        quiesce = quiesce,
    ))
}

/// `VirtualMachineSnapshot.RemoveSnapshot_Task` (`_this`, `removeChildren`,
/// `consolidate`).
pub fn remove_snapshot(snapshot: &MoRef, remove_children: bool, consolidate: bool) -> String {
    envelope(&format!(
        concat!(
            r#"<RemoveSnapshot_Task xmlns="urn:vim25">{this}"#,
            r#"<removeChildren>{rc}</removeChildren><consolidate>{c}</consolidate>"#,
            r#"</RemoveSnapshot_Task>"#
        ),
        this = snapshot.to_xml("_this"),
        rc = remove_children,
        c = consolidate,
    ))
}

/// A method whose only argument is `_this`: `PowerOffVM_Task`, `PowerOnVM_Task` (no
/// `host`: the VM's own), `ShutdownGuest`.
pub fn this_only(method: &str, this: &MoRef) -> String {
    envelope(&format!(
        r#"<{method} xmlns="urn:vim25">{}</{method}>"#,
        this.to_xml("_this")
    ))
}

/// Read the `Task` moref a `*_Task` method returns.
pub fn parse_task_ref(resp: &Element) -> Result<crate::task::TaskRef, ParseError> {
    let rv = resp
        .child("returnval")
        .and_then(MoRef::from_element)
        .ok_or(ParseError::Missing {
            within: "task method response",
            missing: "a returnval Task moref",
        })?;
    if !rv.kind.is_empty() && rv.kind != "Task" {
        return Err(ParseError::Unexpected {
            within: "task method response",
            element: "returnval type",
            value: rv.kind,
            expected: "Task",
        });
    }
    Ok(crate::task::TaskRef { moref: rv.value })
}

/// Read the morefs of an `ArrayOfManagedObjectReference` value (e.g. `recentTask`), at
/// most `limit`.
pub fn parse_moref_array(
    val: &Element,
    within: &'static str,
    limit: usize,
) -> Result<Vec<MoRef>, ParseError> {
    if val.children.len() > limit {
        return Err(ParseError::TooMany {
            within,
            what: "morefs",
            limit,
        });
    }
    Ok(val
        .children
        .iter()
        .filter_map(MoRef::from_element)
        .collect())
}

fn is_moref(e: &Element) -> bool {
    match e.xsi_type() {
        Some(t) => t == "ManagedObjectReference",
        None => e.plain_attr("type").is_some(),
    }
}

/// Read a `TaskInfo` (the `val` of a task's `info` property). `task` is the task asked
/// about, used when `info.task` is absent.
///
/// Refused ([`ParseError`]): no `state`, a state other than queued/running/success/error,
/// a `result` that is not a moref (with an `xsi:type` other than
/// `ManagedObjectReference`, or empty), a `progress` outside 0–100, and the `error` state
/// without `error.fault`.
pub fn parse_task_info(
    val: &Element,
    task: &crate::task::TaskRef,
) -> Result<crate::task::TaskInfo, ParseError> {
    use crate::task::{TaskFault, TaskInfo, TaskRef, TaskState};
    const W: &str = "TaskInfo";
    let state_text = val.child_text("state").ok_or(ParseError::Missing {
        within: W,
        missing: "state",
    })?;
    let state = TaskState::parse(state_text).ok_or_else(|| ParseError::Unexpected {
        within: W,
        element: "state",
        value: state_text.to_string(),
        expected: "queued, running, success or error",
    })?;
    let result = match val.child("result") {
        None => None,
        Some(r) if is_moref(r) => Some(MoRef::from_element(r).ok_or(ParseError::Missing {
            within: "TaskInfo.result",
            missing: "a moref value",
        })?),
        Some(r) => {
            return Err(ParseError::Unexpected {
                within: W,
                element: "result",
                value: r.xsi_type().unwrap_or("(no xsi:type)").to_string(),
                expected: "a ManagedObjectReference",
            });
        }
    };
    let progress = match val.child_text("progress") {
        None | Some("") => None,
        Some(p) => Some(p.parse::<u8>().ok().filter(|p| *p <= 100).ok_or_else(|| {
            ParseError::Unexpected {
                within: W,
                element: "progress",
                value: p.to_string(),
                expected: "a percentage (0-100)",
            }
        })?),
    };
    let error = match val.child("error") {
        Some(e) => {
            let name = e
                .child("fault")
                .and_then(|f| f.xsi_type().map(str::to_string))
                .ok_or(ParseError::Missing {
                    within: "TaskInfo.error",
                    missing: "fault (with an xsi:type)",
                })?;
            let message = e
                .child_text("localizedMessage")
                .filter(|m| !m.is_empty())
                .unwrap_or(&name)
                .to_string();
            Some(TaskFault { name, message })
        }
        None if state == TaskState::Error => {
            return Err(ParseError::Missing {
                within: "TaskInfo in state error",
                missing: "error",
            });
        }
        None => None,
    };
    let text = |n: &str| {
        val.child_text(n)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    };
    Ok(TaskInfo {
        task: val
            .child("task")
            .and_then(MoRef::from_element)
            .map(|m| TaskRef { moref: m.value })
            .unwrap_or_else(|| task.clone()),
        name: text("name"),
        description_id: text("descriptionId"),
        entity: val.child("entity").and_then(MoRef::from_element),
        state,
        progress,
        result,
        error,
        cancelled: val.child_text("cancelled") == Some("true"),
    })
}

/// Why a response could not be read (the client reports it as [`crate::Error::Protocol`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A required element is absent.
    #[error("{within} without {missing}")]
    Missing {
        /// The element (or response) it should be in.
        within: &'static str,
        /// What is missing.
        missing: &'static str,
    },
    /// An element that should hold a non-negative integer does not.
    #[error("{within}: {element} {value:?} is not a non-negative integer")]
    NotANumber {
        /// The element it is in.
        within: &'static str,
        /// The element.
        element: &'static str,
        /// What it holds.
        value: String,
    },
    /// An element holds a value Ferry does not accept.
    #[error("{within}: {element} {value:?} is not {expected}")]
    Unexpected {
        /// The element it is in.
        within: &'static str,
        /// The element.
        element: &'static str,
        /// What it holds.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// More items than Ferry reads from one response.
    #[error("{within} with more than {limit} {what}")]
    TooMany {
        /// The element or property.
        within: &'static str,
        /// What is counted.
        what: &'static str,
        /// The cap.
        limit: usize,
    },
}

fn u64_child(e: &Element, name: &'static str, what: &'static str) -> Result<u64, ParseError> {
    let t = e.child_text(name).ok_or(ParseError::Missing {
        within: what,
        missing: name,
    })?;
    t.parse().map_err(|_| ParseError::NotANumber {
        within: what,
        element: name,
        value: t.to_string(),
    })
}

/// Read a `QueryChangedDiskAreasResponse` (`DiskChangeInfo`). The areas are returned
/// as sent; [`crate::cbt::check_page`] checks them against the request. More than
/// [`crate::cbt::MAX_AREAS_PER_PAGE`] areas is an error.
pub fn parse_disk_change_info(resp: &Element) -> Result<crate::cbt::ChangedAreasPage, ParseError> {
    let rv = resp.child("returnval").ok_or(ParseError::Missing {
        within: "QueryChangedDiskAreas response",
        missing: "returnval",
    })?;
    let start_offset = u64_child(rv, "startOffset", "DiskChangeInfo")?;
    let length = u64_child(rv, "length", "DiskChangeInfo")?;
    let mut areas = Vec::new();
    for a in rv.children_named("changedArea") {
        if areas.len() >= crate::cbt::MAX_AREAS_PER_PAGE {
            return Err(ParseError::TooMany {
                within: "DiskChangeInfo",
                what: "changed areas",
                limit: crate::cbt::MAX_AREAS_PER_PAGE,
            });
        }
        areas.push(crate::cbt::ChangedArea {
            start: u64_child(a, "start", "DiskChangeExtent")?,
            length: u64_child(a, "length", "DiskChangeExtent")?,
        });
    }
    Ok(crate::cbt::ChangedAreasPage {
        start_offset,
        length,
        areas,
    })
}

/// A SOAP fault from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoapFault {
    /// The vim25 fault type (`InvalidLogin`, `NotAuthenticated`, …), or the SOAP
    /// `faultcode` when the fault has no detail.
    pub name: String,
    /// `faultstring`.
    pub message: String,
}

/// What reading a response envelope can yield besides the response element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// The body is a `Fault`.
    Fault(SoapFault),
    /// Not a SOAP response we understand.
    Malformed(String),
}

/// Parse an envelope; return the element inside `Body` (the `XxxResponse`), or its fault.
pub fn parse_response(doc: &str) -> Result<Element, ResponseError> {
    let root = xml::parse(doc).map_err(|e| ResponseError::Malformed(e.0))?;
    if root.name != "Envelope" {
        return Err(ResponseError::Malformed(format!(
            "expected a SOAP Envelope, got <{}>",
            root.name
        )));
    }
    let body = root
        .child("Body")
        .ok_or_else(|| ResponseError::Malformed("SOAP Envelope without Body".into()))?;
    let first = body
        .children
        .first()
        .ok_or_else(|| ResponseError::Malformed("empty SOAP Body".into()))?;
    if first.name == "Fault" {
        return Err(ResponseError::Fault(parse_fault(first)));
    }
    Ok(first.clone())
}

fn parse_fault(f: &Element) -> SoapFault {
    let message = f.child_text("faultstring").unwrap_or_default().to_string();
    let detail = f.child("detail").and_then(|d| d.children.first());
    let name = match detail {
        Some(d) => d
            .xsi_type()
            .map(str::to_string)
            .unwrap_or_else(|| d.name.strip_suffix("Fault").unwrap_or(&d.name).to_string()),
        None => f
            .child_text("faultcode")
            .unwrap_or("UnknownFault")
            .to_string(),
    };
    SoapFault { name, message }
}

/// The parts of `ServiceContent` the client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceContent {
    /// `rootFolder`.
    pub root_folder: MoRef,
    /// `propertyCollector`.
    pub property_collector: MoRef,
    /// `sessionManager`.
    pub session_manager: MoRef,
    /// `searchIndex`.
    pub search_index: MoRef,
    /// `about.apiVersion`, e.g. `8.0.3.0`.
    pub api_version: Option<String>,
    /// `about.apiType`: `VirtualCenter` or `HostAgent`.
    pub api_type: Option<String>,
}

/// Read a `RetrieveServiceContentResponse`.
pub fn parse_service_content(resp: &Element) -> Result<ServiceContent, ParseError> {
    let rv = resp.child("returnval").ok_or(ParseError::Missing {
        within: "RetrieveServiceContent response",
        missing: "returnval",
    })?;
    let mo = |name: &'static str| {
        rv.child(name)
            .and_then(MoRef::from_element)
            .ok_or(ParseError::Missing {
                within: "ServiceContent",
                missing: name,
            })
    };
    let about = rv.child("about");
    Ok(ServiceContent {
        root_folder: mo("rootFolder")?,
        property_collector: mo("propertyCollector")?,
        session_manager: mo("sessionManager")?,
        search_index: mo("searchIndex")?,
        api_version: about
            .and_then(|a| a.child_text("apiVersion"))
            .map(str::to_string),
        api_type: about
            .and_then(|a| a.child_text("apiType"))
            .map(str::to_string),
    })
}

/// Read the `returnval` morefs of a `FindByUuidResponse` / `FindAllByUuidResponse`.
pub fn parse_morefs(resp: &Element) -> Vec<MoRef> {
    resp.children_named("returnval")
        .filter_map(MoRef::from_element)
        .collect()
}

/// One object of a `RetrievePropertiesEx` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectContent {
    /// The object.
    pub obj: MoRef,
    /// `(property path, val element)` for each property that is set.
    pub props: Vec<(String, Element)>,
    /// Property paths the server could not read (`missingSet`), with the fault name.
    pub missing: Vec<(String, String)>,
}

impl ObjectContent {
    /// The `val` element of a property.
    pub fn prop(&self, path: &str) -> Option<&Element> {
        self.props.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }

    /// The trimmed text of a property.
    pub fn prop_text(&self, path: &str) -> Option<&str> {
        self.prop(path).map(|v| v.text.trim())
    }

    /// A property holding a moref.
    pub fn prop_moref(&self, path: &str) -> Option<MoRef> {
        self.prop(path).and_then(MoRef::from_element)
    }
}

/// A page of a `RetrievePropertiesEx` / `ContinueRetrievePropertiesEx` result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetrieveResult {
    /// The objects on this page.
    pub objects: Vec<ObjectContent>,
    /// Set when more pages follow.
    pub token: Option<String>,
}

/// Read a `RetrievePropertiesExResponse` (an empty response means no objects).
pub fn parse_retrieve_result(resp: &Element) -> Result<RetrieveResult, ParseError> {
    let Some(rv) = resp.child("returnval") else {
        return Ok(RetrieveResult::default());
    };
    let mut out = RetrieveResult {
        token: rv
            .child_text("token")
            .filter(|t| !t.is_empty())
            .map(str::to_string),
        ..Default::default()
    };
    for o in rv.children_named("objects") {
        let obj = o
            .child("obj")
            .and_then(MoRef::from_element)
            .ok_or(ParseError::Missing {
                within: "ObjectContent",
                missing: "obj",
            })?;
        let mut props = Vec::new();
        for p in o.children_named("propSet") {
            let name = p
                .child_text("name")
                .ok_or(ParseError::Missing {
                    within: "propSet",
                    missing: "name",
                })?
                .to_string();
            let val = p.child("val").cloned().unwrap_or_default();
            props.push((name, val));
        }
        let missing = o
            .children_named("missingSet")
            .map(|m| {
                let path = m.child_text("path").unwrap_or_default().to_string();
                let fault = m
                    .child("fault")
                    .and_then(|f| f.child("fault"))
                    .and_then(|f| f.xsi_type().map(str::to_string))
                    .unwrap_or_else(|| "unknown".into());
                (path, fault)
            })
            .collect();
        out.objects.push(ObjectContent {
            obj,
            props,
            missing,
        });
    }
    Ok(out)
}

/// A `VirtualDisk` from a `config.hardware.device` array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDevice {
    /// Device key (e.g. 2000).
    pub key: i32,
    /// `backing.fileName`.
    pub file_name: String,
    /// `capacityInBytes`, or `capacityInKB` × 1024.
    pub capacity_bytes: u64,
    /// `backing.changeId`, when CBT is on.
    pub change_id: Option<String>,
    /// `backing.parent.fileName`, `backing.parent.parent.fileName`, … (at most
    /// [`crate::MAX_PARENT_CHAIN`]).
    pub parents: Vec<String>,
    /// The backing's `xsi:type` without prefix, e.g. `VirtualDiskFlatVer2BackingInfo`.
    pub backing: Option<String>,
}

/// The disk backings whose change IDs Forklift's `GetSnapshotDeltas` records
/// (`StoreSnapshotDeltas`); [`crate::Client::snapshot_change_ids`] reads the same ones.
pub const CBT_BACKINGS: [&str; 4] = [
    "VirtualDiskFlatVer2BackingInfo",
    "VirtualDiskSparseVer2BackingInfo",
    "VirtualDiskRawDiskMappingVer1BackingInfo",
    "VirtualDiskRawDiskVer2BackingInfo",
];

/// Read the `VirtualDisk`s of a `config.hardware.device` value (`ArrayOfVirtualDevice`).
/// Other devices are skipped; more than [`crate::MAX_DEVICES`] devices is an error.
pub fn parse_disks(val: &Element) -> Result<Vec<DiskDevice>, ParseError> {
    if val.children.len() > crate::MAX_DEVICES {
        return Err(ParseError::TooMany {
            within: "config.hardware.device",
            what: "devices",
            limit: crate::MAX_DEVICES,
        });
    }
    let mut out = Vec::new();
    for d in &val.children {
        if d.xsi_type() != Some("VirtualDisk") {
            continue;
        }
        let key: i32 =
            d.child_text("key")
                .and_then(|k| k.parse().ok())
                .ok_or(ParseError::Missing {
                    within: "VirtualDisk",
                    missing: "a numeric key",
                })?;
        let backing = d.child("backing").ok_or(ParseError::Missing {
            within: "VirtualDisk",
            missing: "backing",
        })?;
        // VirtualDiskRawDiskVer2BackingInfo names its file `descriptorFileName`.
        let file_name = backing
            .child_text("fileName")
            .or_else(|| backing.child_text("descriptorFileName"))
            .unwrap_or_default()
            .to_string();
        let capacity_bytes = match d.child_text("capacityInBytes").and_then(|c| c.parse().ok()) {
            Some(b) => b,
            None => d
                .child_text("capacityInKB")
                .and_then(|c| c.parse::<u64>().ok())
                .and_then(|kb| kb.checked_mul(1024))
                .unwrap_or(0),
        };
        let change_id = backing
            .child_text("changeId")
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let mut parents = Vec::new();
        let mut cur = backing.child("parent");
        while let Some(p) = cur {
            if parents.len() >= crate::MAX_PARENT_CHAIN {
                break;
            }
            if let Some(f) = p.child_text("fileName") {
                parents.push(f.to_string());
            }
            cur = p.child("parent");
        }
        out.push(DiskDevice {
            key,
            file_name,
            capacity_bytes,
            change_id,
            parents,
            backing: backing.xsi_type().map(str::to_string),
        });
    }
    Ok(out)
}

/// One snapshot of a VM's snapshot tree, flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotNode {
    /// The snapshot moref, e.g. `snapshot-7`.
    pub moref: String,
    /// Its name.
    pub name: String,
    /// Distance from a root snapshot (0 for roots).
    pub depth: usize,
}

/// Flatten the `snapshot` property (`VirtualMachineSnapshotInfo`) depth-first, roots in
/// order. More than [`crate::MAX_SNAPSHOTS`] snapshots is an error.
pub fn parse_snapshot_tree(val: &Element) -> Result<Vec<SnapshotNode>, ParseError> {
    let mut out = Vec::new();
    let mut stack: Vec<(&Element, usize)> = val
        .children_named("rootSnapshotList")
        .map(|e| (e, 0))
        .collect();
    stack.reverse();
    while let Some((node, depth)) = stack.pop() {
        if out.len() >= crate::MAX_SNAPSHOTS {
            return Err(ParseError::TooMany {
                within: "the snapshot tree",
                what: "snapshots",
                limit: crate::MAX_SNAPSHOTS,
            });
        }
        let moref = node
            .child("snapshot")
            .map(|s| s.text.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or(ParseError::Missing {
                within: "snapshot tree node",
                missing: "a snapshot moref",
            })?;
        out.push(SnapshotNode {
            moref,
            name: node.child_text("name").unwrap_or_default().to_string(),
            depth,
        });
        let children: Vec<_> = node.children_named("childSnapshotList").collect();
        for c in children.into_iter().rev() {
            stack.push((c, depth + 1));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Responses captured from the fake vCenter (`testdata/`), plus hand-made variants.

    use super::*;

    fn ok(doc: &str) -> Element {
        parse_response(doc).unwrap()
    }

    fn fault(doc: &str) -> SoapFault {
        match parse_response(doc) {
            Err(ResponseError::Fault(f)) => f,
            other => panic!("expected a fault, got {other:?}"),
        }
    }

    #[test]
    fn service_content() {
        let r = ok(include_str!("testdata/service_content.xml"));
        assert_eq!(r.name, "RetrieveServiceContentResponse");
        let sc = parse_service_content(&r).unwrap();
        assert_eq!(sc.root_folder, MoRef::new("Folder", "group-d1"));
        assert_eq!(
            sc.property_collector,
            MoRef::new("PropertyCollector", "propertyCollector")
        );
        assert_eq!(
            sc.session_manager,
            MoRef::new("SessionManager", "SessionManager")
        );
        assert_eq!(sc.search_index, MoRef::new("SearchIndex", "SearchIndex"));
        assert_eq!(sc.api_version.as_deref(), Some("8.0.3.0"));
        assert_eq!(sc.api_type.as_deref(), Some("VirtualCenter"));
        // ESXi names its managers differently; a missing one is an error.
        let esx = r#"<Envelope><Body><R><returnval><rootFolder type="Folder">ha-folder-root</rootFolder>
            <propertyCollector type="PropertyCollector">ha-property-collector</propertyCollector>
            <sessionManager type="SessionManager">ha-sessionmgr</sessionManager>
            <about><apiType>HostAgent</apiType></about></returnval></R></Body></Envelope>"#;
        assert!(
            parse_service_content(&ok(esx))
                .unwrap_err()
                .to_string()
                .contains("searchIndex")
        );
    }

    #[test]
    fn login_and_logout() {
        let r = ok(include_str!("testdata/login.xml"));
        assert_eq!(r.name, "LoginResponse");
        assert_eq!(
            r.child("returnval").unwrap().child_text("userName"),
            Some("u")
        );
        assert_eq!(
            ok(include_str!("testdata/logout.xml")).name,
            "LogoutResponse"
        );
    }

    #[test]
    fn faults_by_type() {
        let f = fault(include_str!("testdata/fault_invalid_login.xml"));
        assert_eq!(f.name, "InvalidLogin");
        assert!(f.message.contains("incorrect user name or password"));
        assert_eq!(
            fault(include_str!("testdata/fault_not_authenticated.xml")).name,
            "NotAuthenticated"
        );
        let f = fault(include_str!("testdata/fault_managed_object_not_found.xml"));
        assert_eq!(f.name, "ManagedObjectNotFound");
        assert!(f.message.contains("vm-999"));
        // No xsi:type: the element name without "Fault"; no detail: the faultcode.
        let f = fault(
            "<Envelope><Body><Fault><faultcode>x</faultcode><faultstring>m</faultstring><detail><NoPermissionFault/></detail></Fault></Body></Envelope>",
        );
        assert_eq!(f.name, "NoPermission");
        let f = fault(
            "<Envelope><Body><Fault><faultcode>ServerFaultCode</faultcode><faultstring>m</faultstring></Fault></Body></Envelope>",
        );
        assert_eq!(f.name, "ServerFaultCode");
    }

    #[test]
    fn malformed_envelopes() {
        for doc in [
            "",
            "<html/>",
            "<Envelope/>",
            "<Envelope><Body/></Envelope>",
            "<Envelope><Body><x>",
        ] {
            assert!(
                matches!(parse_response(doc), Err(ResponseError::Malformed(_))),
                "{doc}"
            );
        }
    }

    #[test]
    fn find_by_uuid_results() {
        let r = ok(include_str!("testdata/find_all_by_uuid.xml"));
        assert_eq!(
            parse_morefs(&r),
            vec![MoRef::new("VirtualMachine", "vm-123")]
        );
        assert!(parse_morefs(&ok(include_str!("testdata/find_by_uuid_empty.xml"))).is_empty());
    }

    #[test]
    fn retrieve_datacenters() {
        let r =
            parse_retrieve_result(&ok(include_str!("testdata/retrieve_datacenters.xml"))).unwrap();
        assert_eq!(r.token, None);
        assert_eq!(r.objects.len(), 1);
        assert_eq!(r.objects[0].obj, MoRef::new("Datacenter", "datacenter-1"));
        assert_eq!(r.objects[0].prop_text("name"), Some("dc1"));
        let empty = ok("<Envelope><Body><RetrievePropertiesExResponse/></Body></Envelope>");
        assert_eq!(
            parse_retrieve_result(&empty).unwrap(),
            RetrieveResult::default()
        );
    }

    #[test]
    fn retrieve_vm_devices_and_snapshots() {
        let r = parse_retrieve_result(&ok(include_str!("testdata/retrieve_vm.xml"))).unwrap();
        let o = &r.objects[0];
        assert_eq!(o.prop_text("name"), Some("vm1"));
        assert_eq!(o.prop_text("runtime.powerState"), Some("poweredOn"));
        assert_eq!(
            o.prop_moref("runtime.host"),
            Some(MoRef::new("HostSystem", "host-1"))
        );
        let disks = parse_disks(o.prop("config.hardware.device").unwrap()).unwrap();
        assert_eq!(
            disks,
            vec![DiskDevice {
                key: 2000,
                file_name: "[ds1] vm1/vm1-000001.vmdk".into(),
                capacity_bytes: 10 << 30,
                change_id: Some("52 de c0 11 22 33 44 55-66 77 88 99 aa bb 63/81".into()),
                parents: vec!["[ds1] vm1/vm1.vmdk".into()],
                backing: Some("VirtualDiskFlatVer2BackingInfo".into()),
            }]
        );
        let snaps = parse_snapshot_tree(o.prop("snapshot").unwrap()).unwrap();
        let flat: Vec<_> = snaps
            .iter()
            .map(|s| (s.moref.as_str(), s.name.as_str(), s.depth))
            .collect();
        assert_eq!(
            flat,
            vec![
                ("snapshot-7", "s1", 0),
                ("snapshot-8", "s2", 1),
                ("snapshot-9", "s3", 0)
            ]
        );
    }

    #[test]
    fn vcenter_variants_are_tolerated() {
        // Other prefixes, unknown elements, a paging token, a missingSet, capacityInKB only.
        let doc = r#"<?xml version="1.0"?>
        <soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:x="http://www.w3.org/2001/XMLSchema-instance">
        <soap:Header><unknown/></soap:Header><soap:Body><v:RetrievePropertiesExResponse xmlns:v="urn:vim25">
        <v:returnval><v:token>tok-1</v:token><v:objects><v:obj type="VirtualMachine">vm-1</v:obj>
        <v:propSet><v:name>config.hardware.device</v:name><v:val x:type="ArrayOfVirtualDevice">
          <v:VirtualDevice x:type="VirtualCdrom"><v:key>3000</v:key></v:VirtualDevice>
          <v:VirtualDevice x:type="VirtualDisk"><v:key>2000</v:key><v:futureField>1</v:futureField>
            <v:backing x:type="VirtualDiskSparseVer2BackingInfo"><v:fileName>[a &amp; b] x.vmdk</v:fileName></v:backing>
            <v:capacityInKB>2048</v:capacityInKB></v:VirtualDevice>
        </v:val></v:propSet>
        <v:missingSet><v:path>snapshot</v:path><v:fault><v:fault x:type="NoPermission"/></v:fault></v:missingSet>
        </v:objects></v:returnval></v:RetrievePropertiesExResponse></soap:Body></soap:Envelope>"#;
        let r = parse_retrieve_result(&ok(doc)).unwrap();
        assert_eq!(r.token.as_deref(), Some("tok-1"));
        let o = &r.objects[0];
        assert_eq!(
            o.missing,
            vec![("snapshot".to_string(), "NoPermission".to_string())]
        );
        let d = parse_disks(o.prop("config.hardware.device").unwrap()).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].key, d[0].file_name.as_str(), d[0].capacity_bytes),
            (2000, "[a & b] x.vmdk", 2 << 20)
        );
    }

    #[test]
    fn walk_sizes_are_capped() {
        let mut chain = String::from("<fileName>top</fileName>");
        for i in 0..40 {
            chain = format!("<fileName>f{i}</fileName><parent>{chain}</parent>");
        }
        let doc = format!(
            "<val><VirtualDevice xsi:type=\"VirtualDisk\"><key>1</key><backing>{chain}</backing></VirtualDevice></val>"
        );
        let d = parse_disks(&xml::parse(&doc).unwrap()).unwrap();
        assert_eq!(d[0].parents.len(), crate::MAX_PARENT_CHAIN);
        let many = "<VirtualDevice/>".repeat(crate::MAX_DEVICES + 1);
        assert!(parse_disks(&xml::parse(&format!("<val>{many}</val>")).unwrap()).is_err());
        let node = "<rootSnapshotList><snapshot>s</snapshot></rootSnapshotList>";
        let doc = format!("<val>{}</val>", node.repeat(crate::MAX_SNAPSHOTS + 1));
        assert!(parse_snapshot_tree(&xml::parse(&doc).unwrap()).is_err());
    }

    #[test]
    fn disk_change_info() {
        use crate::cbt::ChangedArea;
        let r = ok(include_str!("testdata/query_changed_disk_areas.xml"));
        assert_eq!(r.name, "QueryChangedDiskAreasResponse");
        let p = parse_disk_change_info(&r).unwrap();
        assert_eq!((p.start_offset, p.length), (0, 10 << 30));
        assert_eq!(
            p.areas,
            vec![
                ChangedArea {
                    start: 0,
                    length: 65536
                },
                ChangedArea {
                    start: 1 << 20,
                    length: 131072
                },
                ChangedArea {
                    start: (10 << 30) - 65536,
                    length: 65536
                },
            ]
        );
        assert_eq!(p.changed_bytes(), 262144);
        // Other prefixes and unknown elements; no areas at all.
        let doc = r#"<s:Envelope xmlns:s="x"><s:Body><v:QueryChangedDiskAreasResponse xmlns:v="urn:vim25">
            <v:returnval><v:future>1</v:future><v:startOffset> 4096 </v:startOffset><v:length>8192</v:length>
            </v:returnval></v:QueryChangedDiskAreasResponse></s:Body></s:Envelope>"#;
        let p = parse_disk_change_info(&ok(doc)).unwrap();
        assert_eq!((p.start_offset, p.length, p.areas.len()), (4096, 8192, 0));
        // Missing or negative numbers, no returnval.
        for inner in [
            "",
            "<returnval><length>1</length></returnval>",
            "<returnval><startOffset>0</startOffset></returnval>",
            "<returnval><startOffset>-1</startOffset><length>1</length></returnval>",
            "<returnval><startOffset>0</startOffset><length>9</length><changedArea><start>0</start></changedArea></returnval>",
            "<returnval><startOffset>0</startOffset><length>9</length><changedArea><start>x</start><length>1</length></changedArea></returnval>",
        ] {
            let doc = format!("<Envelope><Body><R>{inner}</R></Body></Envelope>");
            assert!(parse_disk_change_info(&ok(&doc)).is_err(), "{inner}");
        }
        let area = "<changedArea><start>0</start><length>1</length></changedArea>";
        let doc = format!(
            "<Envelope><Body><R><returnval><startOffset>0</startOffset><length>1</length>{}</returnval></R></Body></Envelope>",
            area.repeat(crate::cbt::MAX_AREAS_PER_PAGE + 1)
        );
        assert!(
            parse_disk_change_info(&ok(&doc))
                .unwrap_err()
                .to_string()
                .contains("more than")
        );
        let f = fault(include_str!("testdata/fault_file_fault.xml"));
        assert_eq!(f.name, "FileFault");
        assert!(f.message.contains("Error caused by file"));
    }

    #[test]
    fn changed_areas_request() {
        let body = query_changed_disk_areas(
            &MoRef::new("VirtualMachine", "vm-1"),
            &MoRef::new("VirtualMachineSnapshot", "snapshot-2"),
            2000,
            1 << 40,
            "52 de/81 <x>",
        );
        let root = xml::parse(&body).unwrap();
        let q = root
            .child("Body")
            .unwrap()
            .child("QueryChangedDiskAreas")
            .unwrap();
        let names: Vec<_> = q.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["_this", "snapshot", "deviceKey", "startOffset", "changeId"]
        );
        assert_eq!(
            q.child("_this").unwrap().attr("type"),
            Some("VirtualMachine")
        );
        assert_eq!(
            q.child("snapshot").unwrap().attr("type"),
            Some("VirtualMachineSnapshot")
        );
        assert_eq!(q.child_text("startOffset"), Some("1099511627776"));
        assert_eq!(q.child_text("changeId"), Some("52 de/81 <x>"));
    }

    fn task_info_of(doc: &str) -> Result<crate::task::TaskInfo, ParseError> {
        let r = parse_retrieve_result(&ok(doc)).unwrap();
        let o = &r.objects[0];
        parse_task_info(
            o.prop("info").unwrap(),
            &crate::task::TaskRef::new(&o.obj.value),
        )
    }

    /// A TaskInfo `val` with `inner` as its children, in a RetrievePropertiesEx reply.
    fn task_doc(inner: &str) -> String {
        format!(
            concat!(
                "<Envelope><Body><RetrievePropertiesExResponse><returnval><objects>",
                "<obj type=\"Task\">task-9</obj><propSet><name>info</name>",
                "<val xsi:type=\"TaskInfo\"><key>task-9</key>{}</val></propSet>",
                "</objects></returnval></RetrievePropertiesExResponse></Body></Envelope>"
            ),
            inner
        )
    }

    #[test]
    fn task_info_success_and_error() {
        use crate::task::{TaskFault, TaskState};
        let i = task_info_of(include_str!("testdata/task_info_success.xml")).unwrap();
        assert_eq!(i.task.moref, "task-301");
        assert_eq!(i.state, TaskState::Success);
        assert_eq!(i.name.as_deref(), Some("vim.VirtualMachine.createSnapshot"));
        assert_eq!(
            i.description_id.as_deref(),
            Some("VirtualMachine.createSnapshot")
        );
        assert_eq!(i.entity, Some(MoRef::new("VirtualMachine", "vm-123")));
        assert_eq!(
            i.result,
            Some(MoRef::new("VirtualMachineSnapshot", "snapshot-1001"))
        );
        assert_eq!((i.error, i.progress, i.cancelled), (None, None, false));
        // vcsim writes xsi:type before the moref's own type.
        let i = task_info_of(&task_doc(
            "<state>success</state><result xsi:type=\"ManagedObjectReference\" type=\"VirtualMachineSnapshot\">snapshot-72</result>",
        ))
        .unwrap();
        assert_eq!(
            i.result,
            Some(MoRef::new("VirtualMachineSnapshot", "snapshot-72"))
        );
        let i = task_info_of(include_str!("testdata/task_info_error.xml")).unwrap();
        assert_eq!(i.state, TaskState::Error);
        assert_eq!(i.result, None);
        let TaskFault { name, message } = i.error.unwrap();
        assert_eq!(name, "FileFault");
        assert!(message.contains("Error caused by file"), "{message}");
        // Running with progress; queued; other prefixes; vcsim's error message.
        let i = task_info_of(&task_doc("<state>running</state><progress>42</progress>")).unwrap();
        assert_eq!((i.state, i.progress), (TaskState::Running, Some(42)));
        assert_eq!(i.task.moref, "task-9");
        let i = task_info_of(&task_doc(
            "<state>queued</state><cancelled>true</cancelled>",
        ))
        .unwrap();
        assert_eq!((i.state, i.cancelled), (TaskState::Queued, true));
        let i = task_info_of(&task_doc(
            "<state>error</state><error><fault xsi:type=\"InvalidPowerState\"><requestedState>poweredOff</requestedState></fault><localizedMessage>*types.InvalidPowerState</localizedMessage></error>",
        ))
        .unwrap();
        assert_eq!(i.error.unwrap().name, "InvalidPowerState");
        // No localizedMessage: the fault's name stands in.
        let i = task_info_of(&task_doc(
            "<state>error</state><error><fault xsi:type=\"vim25:NoPermission\"/></error>",
        ))
        .unwrap();
        assert_eq!(
            i.error,
            Some(crate::task::TaskFault {
                name: "NoPermission".into(),
                message: "NoPermission".into()
            })
        );
    }

    #[test]
    fn task_info_without_state_is_refused() {
        let e = task_info_of(&task_doc("<name>x</name>")).unwrap_err();
        assert_eq!(e.to_string(), "TaskInfo without state");
        let e = task_info_of(&task_doc("<state></state>")).unwrap_err();
        assert!(e.to_string().contains("state \"\""), "{e}");
    }

    #[test]
    fn task_info_with_unknown_state_is_refused() {
        for s in ["done", "Success", "SUCCESS", "1"] {
            let e = task_info_of(&task_doc(&format!("<state>{s}</state>"))).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("TaskInfo: state {s:?} is not queued, running, success or error")
            );
        }
    }

    #[test]
    fn task_info_whose_result_is_not_a_moref_is_refused() {
        for (result, shown) in [
            (
                "<result xsi:type=\"xsd:string\">snapshot-1</result>",
                "string",
            ),
            (
                "<result xsi:type=\"ClusterPowerOnVmResult\"><attempted/></result>",
                "ClusterPowerOnVmResult",
            ),
            ("<result>snapshot-1</result>", "(no xsi:type)"),
        ] {
            let e =
                task_info_of(&task_doc(&format!("<state>success</state>{result}"))).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("TaskInfo: result {shown:?} is not a ManagedObjectReference"),
                "{result}"
            );
        }
        let e = task_info_of(&task_doc(
            "<state>success</state><result type=\"VirtualMachineSnapshot\" xsi:type=\"ManagedObjectReference\"> </result>",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("moref value"), "{e}");
    }

    #[test]
    fn task_info_in_error_without_a_fault_is_refused() {
        let e = task_info_of(&task_doc("<state>error</state>")).unwrap_err();
        assert_eq!(e.to_string(), "TaskInfo in state error without error");
        let e = task_info_of(&task_doc(
            "<state>error</state><error><localizedMessage>m</localizedMessage></error>",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("fault"), "{e}");
    }

    #[test]
    fn task_info_with_progress_out_of_range_is_refused() {
        for p in ["101", "-1", "x", "4.5"] {
            let e = task_info_of(&task_doc(&format!(
                "<state>running</state><progress>{p}</progress>"
            )))
            .unwrap_err();
            assert!(e.to_string().contains("percentage"), "{p}: {e}");
        }
    }

    #[test]
    fn task_refs_from_task_methods() {
        let r = ok(include_str!("testdata/create_snapshot_task.xml"));
        assert_eq!(parse_task_ref(&r).unwrap().moref, "task-301");
        // ESXi's haTask morefs, no type attribute.
        let r = ok(
            "<Envelope><Body><R><returnval type=\"Task\">haTask-2-vim.VirtualMachine.createSnapshot-1</returnval></R></Body></Envelope>",
        );
        assert!(parse_task_ref(&r).unwrap().moref.starts_with("haTask-"));
        let r = ok("<Envelope><Body><R><returnval>task-1</returnval></R></Body></Envelope>");
        assert_eq!(parse_task_ref(&r).unwrap().moref, "task-1");
        for inner in ["", "<returnval type=\"Task\"></returnval>"] {
            let doc = format!("<Envelope><Body><R>{inner}</R></Body></Envelope>");
            let e = parse_task_ref(&ok(&doc)).unwrap_err();
            assert!(e.to_string().contains("returnval"), "{inner}: {e}");
        }
        let doc = "<Envelope><Body><R><returnval type=\"VirtualMachine\">vm-1</returnval></R></Body></Envelope>";
        let e = parse_task_ref(&ok(doc)).unwrap_err();
        assert!(
            e.to_string().contains("\"VirtualMachine\" is not Task"),
            "{e}"
        );
    }

    #[test]
    fn recent_task_lists_are_capped() {
        let one = "<ManagedObjectReference type=\"Task\" xsi:type=\"ManagedObjectReference\">task-1</ManagedObjectReference>";
        let v = xml::parse(&format!("<val>{}</val>", one.repeat(3))).unwrap();
        assert_eq!(parse_moref_array(&v, "recentTask", 3).unwrap().len(), 3);
        let e = parse_moref_array(&v, "recentTask", 2).unwrap_err();
        assert_eq!(e.to_string(), "recentTask with more than 2 morefs");
    }

    #[test]
    fn snapshot_and_power_requests() {
        let vm = MoRef::new("VirtualMachine", "vm-1");
        let body = create_snapshot(&vm, "forklift-migration-precopy", "a <b>", false, true);
        let root = xml::parse(&body).unwrap();
        let q = root
            .child("Body")
            .unwrap()
            .child("CreateSnapshot_Task")
            .unwrap();
        let names: Vec<_> = q.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["_this", "name", "description", "memory", "quiesce"]);
        assert_eq!(q.child_text("description"), Some("a <b>"));
        assert_eq!(
            (q.child_text("memory"), q.child_text("quiesce")),
            (Some("false"), Some("true"))
        );
        let body = remove_snapshot(
            &MoRef::new("VirtualMachineSnapshot", "snapshot-2"),
            false,
            true,
        );
        let root = xml::parse(&body).unwrap();
        let q = root
            .child("Body")
            .unwrap()
            .child("RemoveSnapshot_Task")
            .unwrap();
        let names: Vec<_> = q.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["_this", "removeChildren", "consolidate"]);
        assert_eq!(
            q.child("_this").unwrap().attr("type"),
            Some("VirtualMachineSnapshot")
        );
        for m in ["PowerOffVM_Task", "PowerOnVM_Task", "ShutdownGuest"] {
            let root = xml::parse(&this_only(m, &vm)).unwrap();
            let q = root.child("Body").unwrap().child(m).unwrap();
            assert_eq!(q.children.len(), 1, "{m}");
            assert_eq!(q.child_text("_this"), Some("vm-1"));
        }
    }

    #[test]
    fn disk_backings_are_named() {
        let doc = concat!(
            "<val>",
            "<VirtualDevice xsi:type=\"VirtualDisk\"><key>2000</key><backing xsi:type=\"VirtualDiskRawDiskVer2BackingInfo\">",
            "<descriptorFileName>[ds1] vm/rdm-000001.vmdk</descriptorFileName><changeId>c/1</changeId></backing></VirtualDevice>",
            "<VirtualDevice xsi:type=\"VirtualDisk\"><key>2001</key><backing xsi:type=\"VirtualDiskSeSparseBackingInfo\">",
            "<fileName>[ds1] vm/se.vmdk</fileName></backing></VirtualDevice>",
            "</val>"
        );
        let d = parse_disks(&xml::parse(doc).unwrap()).unwrap();
        assert_eq!(d[0].file_name, "[ds1] vm/rdm-000001.vmdk");
        assert_eq!(
            d[0].backing.as_deref(),
            Some("VirtualDiskRawDiskVer2BackingInfo")
        );
        assert_eq!(d[0].change_id.as_deref(), Some("c/1"));
        assert_eq!(
            d[1].backing.as_deref(),
            Some("VirtualDiskSeSparseBackingInfo")
        );
        assert!(!CBT_BACKINGS.contains(&"VirtualDiskSeSparseBackingInfo"));
    }

    #[test]
    fn requests_escape_user_input() {
        let sm = MoRef::new("SessionManager", "SessionManager");
        let body = login(&sm, "a<b", "p&w\"");
        assert!(body.contains("<userName>a&lt;b</userName>"));
        assert!(body.contains("<password>p&amp;w&quot;</password>"));
        let root = xml::parse(&body).unwrap();
        let l = root.child("Body").unwrap().child("Login").unwrap();
        assert_eq!(l.child_text("password"), Some("p&w\""));
        let f = find_by_uuid(
            &MoRef::new("SearchIndex", "SearchIndex"),
            None,
            "u",
            true,
            true,
        );
        assert!(f.contains("<FindAllByUuid") && !f.contains("datacenter"));
    }
}
