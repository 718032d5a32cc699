//! The walk over every `QueryChangedDiskAreas` page of a snapshot disk, each page checked
//! by [`crate::cbt::check_page`] before the caller sees it (the page types and checks are
//! in [`crate::cbt`], which knows nothing of the client).

use crate::cbt::{ChangedAreasPage, MAX_CHANGED_AREA_PAGES, check_page};
use crate::client::{Client, Vm};
use crate::error::Error;

/// Stream every `QueryChangedDiskAreas` page of disk `disk_key` in snapshot `snapshot`
/// of `vm`, from offset 0 to the disk's end; see [`for_each_changed_area_page_from`].
pub async fn for_each_changed_area_page(
    client: &Client,
    vm: &Vm,
    snapshot: &str,
    disk_key: i32,
    capacity: u64,
    change_id: &str,
    f: impl FnMut(&ChangedAreasPage) -> Result<(), Error>,
) -> Result<u64, Error> {
    for_each_changed_area_page_from(client, vm, snapshot, disk_key, capacity, change_id, 0, f).await
}

/// Stream every `QueryChangedDiskAreas` page of disk `disk_key` in snapshot `snapshot`
/// of `vm`, from `start` to the disk's end (`capacity` bytes), relative to `change_id`
/// ([`ALL_ALLOCATED`](crate::cbt::ALL_ALLOCATED) = every allocated area), calling `f` once per page, in order.
/// Only one page is held at a time. Returns the total changed bytes.
///
/// Each page is checked by [`check_page`] before `f` sees it; the next page starts at
/// `start_offset + length`; the walk stops at `capacity` and after at most
/// [`MAX_CHANGED_AREA_PAGES`] pages ([`Error::Protocol`]). An error from `f` stops the
/// walk and is returned as is. A refused change ID is [`Error::ChangeIdInvalid`] (a
/// full copy is needed); an expired session is renewed by the client.
#[allow(clippy::too_many_arguments)]
pub async fn for_each_changed_area_page_from(
    client: &Client,
    vm: &Vm,
    snapshot: &str,
    disk_key: i32,
    capacity: u64,
    change_id: &str,
    start: u64,
    mut f: impl FnMut(&ChangedAreasPage) -> Result<(), Error>,
) -> Result<u64, Error> {
    if start > capacity {
        return Err(Error::Config(format!(
            "changed areas from {start}: past the disk capacity {capacity}"
        )));
    }
    let mut cur = start;
    let mut pages = 0u64;
    let mut total = 0u64;
    while cur < capacity {
        if pages >= MAX_CHANGED_AREA_PAGES {
            return Err(Error::Protocol(format!(
                "QueryChangedDiskAreas: more than {MAX_CHANGED_AREA_PAGES} pages for disk \
                 {disk_key} of {} (stopped at {cur} of {capacity})",
                vm.moref
            )));
        }
        let page = client
            .query_changed_disk_areas(vm, snapshot, disk_key, cur, change_id)
            .await?;
        let (end, bytes) = check_page(cur, capacity, &page)?;
        pages += 1;
        tracing::debug!(
            vm = %vm.moref, snapshot, disk_key, start = cur, end,
            areas = page.areas.len(), bytes, "changed areas page"
        );
        f(&page)?;
        total = total.saturating_add(bytes);
        cur = end;
    }
    tracing::info!(vm = %vm.moref, snapshot, disk_key, change_id, pages, changed_bytes = total,
        "read every changed-areas page");
    Ok(total)
}
