"""The console's fleet operations in a real browser (the harness of ``test_dashboard.py``): device tags (shown,
filtered by, edited), the batches view (progress, counts, cancel, its tasks), and the dispatch form targeting tags
and creating batches. Every wait is for a selector or a condition in the page, never a sleep."""

import test_dashboard
from test_dashboard import device_row, task_row

# the browser and the page, as test_dashboard.py has them
chromium = test_dashboard.chromium
console = test_dashboard.console


def batch_row(batch_id, **attributes):
    """The batches table's row of a batch, e.g. ``batch_row(b, status="running")``."""
    return f'#batches tr[data-batch-id="{batch_id}"]' + "".join(f'[data-{k}="{v}"]' for k, v in attributes.items())


def tag_chip(tag, source=None):
    return f'.tag[data-tag="{tag}"]' + (f'[data-source="{source}"]' if source else "")


def put_tags(server, device_id, tags):
    answer = server.session.put(f"{server.url}/api/device/{device_id}/tags", json={"tags": tags}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["device"]


def create_batch(server, **body):
    body.setdefault("task_type", "DELIST")
    answer = server.post("/api/batches", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def batch(server, batch_id):
    return server.get(f"/api/batch/{batch_id}").json()["batch"]


def shown_devices(page):
    return sorted(page.eval("[...document.querySelectorAll('#devices tbody tr')].map((tr) => tr.dataset.deviceId)"))


# ---- tags on the fleet ----


def test_fleet_shows_tags_and_a_tag_filter_narrows_it_as_devices_change(server, devices, console):
    devices("android_001", tags=["shop-a", "vip"])
    devices("android_002", tags=["shop-a"])
    devices("android_003")
    put_tags(server, "android_003", ["vip", "<b>x</b>"])
    page = console(server)
    page.wait(device_row("android_003") + " " + tag_chip("vip", "operator"))
    assert page.count(device_row("android_001") + " " + tag_chip("vip", "device")) == 1
    assert page.text(device_row("android_003") + " " + tag_chip("<b>x</b>")) == "<b>x</b>"  # text, never HTML
    assert page.count("#devices b") == 0
    assert page.texts("#device-tags .tag") == ["<b>x</b>", "shop-a", "vip"]

    page.click('#device-tags .tag[data-tag="vip"]')
    page.wait(device_row("android_002"), state="detached")
    assert shown_devices(page) == ["android_001", "android_003"]
    assert page.text('[data-count="all"]') == "2"
    page.click('#device-tags .tag[data-tag="shop-a"]')  # devices with both
    page.wait(device_row("android_003"), state="detached")
    assert shown_devices(page) == ["android_001"]
    assert page.attr('#device-tags .tag[data-tag="shop-a"]', "aria-pressed") == "true"
    page.screenshot("fleet-tags")

    put_tags(server, "android_002", ["vip"])  # the live feed brings its new tags: it now has both
    page.wait(device_row("android_002") + " " + tag_chip("vip", "operator"))
    assert shown_devices(page) == ["android_001", "android_002"]
    put_tags(server, "android_002", [])
    page.wait(device_row("android_002"), state="detached")

    page.click("#device-tags-clear")
    page.wait(device_row("android_003"))
    assert page.count("#device-tags-clear") == 0 and "null" not in page.text("#device-tags")
    assert shown_devices(page) == ["android_001", "android_002", "android_003"]
    page.click(device_row("android_002") + " " + tag_chip("shop-a"))  # a device's own tag filters too
    page.wait(device_row("android_003"), state="detached")
    assert shown_devices(page) == ["android_001", "android_002"]

    page.go("#/tasks")
    page.go("#/fleet?tag=vip")  # the batches view links to its target's devices like this
    page.wait(device_row("android_002"), state="detached")
    assert shown_devices(page) == ["android_001", "android_003"]


def test_editing_a_devices_tags_in_the_console_changes_them_on_the_server(server, devices, console):
    devices("android_001", tags=["shop-a"])
    page = console(server)
    page.click(device_row("android_001") + ' [data-action="tags"]')
    page.wait("#tag-editor[open]")
    assert page.texts("#tag-registered .tag") == ["shop-a"]
    page.fill("#tag-input", "vip, 华东\nvip")
    page.screenshot("tag-editor")
    page.click("#tag-save")
    page.wait("#tag-editor", state="hidden")
    page.wait(device_row("android_001") + " " + tag_chip("华东", "operator"))
    device = server.get("/api/device/android_001").json()["device"]
    assert device["operator_tags"] == ["vip", "华东"] and device["tags"] == ["shop-a", "vip", "华东"]
    assert "设备标签已更新" in page.text('.notice[data-ok="true"]')

    page.click(device_row("android_001") + ' [data-action="tags"]')
    page.wait("#tag-editor[open]")
    assert page.eval("document.querySelector('#tag-input').value") == "vip, 华东"
    page.fill("#tag-input", "x" * 65)  # longer than a tag may be: the server's answer shows in the dialog
    page.click("#tag-save")
    page.wait("#tag-answer:not([hidden])")
    answer = page.text("#tag-answer")
    assert "HTTP 400" in answer and "VALIDATION_ERROR" in answer and "tags.0" in answer
    assert page.count("#tag-editor[open]") == 1
    assert server.get("/api/device/android_001").json()["device"]["operator_tags"] == ["vip", "华东"]

    page.fill("#tag-input", "")  # no operator tags: the registered one stays
    page.click("#tag-save")
    page.wait(device_row("android_001") + " " + tag_chip("vip"), state="detached")
    assert server.get("/api/device/android_001").json()["device"]["tags"] == ["shop-a"]


# ---- the batches view ----


def test_batches_view_shows_progress_and_counts_lists_tasks_and_cancels(server, devices, console):
    first = devices("android_001", tags=["shop-a"])
    second = devices("android_002", tags=["shop-a"])
    each = create_batch(server, mode="each", target={"tags": ["shop-a"]}, data={"product_ids": ["1"]})
    spread = create_batch(
        server, mode="spread", target={"all": True}, items=[{"product_ids": [str(n)]} for n in range(4)]
    )
    assert each["total"] == 2 and spread["total"] == 4
    first_task, second_task = (first.wait("new_task")["task_id"], second.wait("new_task")["task_id"])
    assert {first_task, second_task} == set(each["task_ids"])

    page = console(server, "/dashboard#/batches")
    page.wait(batch_row(each["batch_id"], status="running") + ' [data-count="dispatched"]')
    assert page.text(batch_row(each["batch_id"]) + ' [data-count="dispatched"]') == "dispatched 2"
    assert page.text(batch_row(spread["batch_id"]) + ' [data-count="pending"]') == "pending 4"
    assert page.count(batch_row(each["batch_id"]) + " " + tag_chip("shop-a")) == 1  # its target
    assert page.text(batch_row(spread["batch_id"]) + " td:nth-child(4)") == "全部设备"

    first.progress(first_task, 50)  # overall: (50 + 0) / 2
    page.wait(batch_row(each["batch_id"]) + ' .progress[data-progress="25"]')
    first.result(first_task)
    second.result(second_task, success=False)
    done = batch_row(each["batch_id"], status="completed")
    page.wait(done + ' .progress[data-progress="100"]')
    assert page.text(done + ' [data-count="completed"]') == "completed 1"
    assert page.text(done + ' [data-count="failed"]') == "failed 1"
    assert page.count(done + ' [data-action="cancel-batch"]') == 0
    page.screenshot("batches")

    # the phones took two of the spread batch's tasks; cancelling it asks first, then ends all four
    cancel = batch_row(spread["batch_id"]) + ' [data-action="cancel-batch"]'
    page.on_dialog(accept=False)
    page.click(cancel)
    assert batch(server, spread["batch_id"])["status"] == "running"
    page.on_dialog(accept=True)
    page.click(cancel)
    page.wait(batch_row(spread["batch_id"], status="cancelled") + ' [data-count="cancelled"]')
    assert page.text(batch_row(spread["batch_id"]) + ' [data-count="cancelled"]') == "cancelled 4"
    assert batch(server, spread["batch_id"])["status"] == "cancelled"
    assert first.wait("cancel_task")["task_id"] in spread["task_ids"]
    log = page.log()
    assert len(log["dialogs"]) == 2 and "未结束的 4 个任务" in log["dialogs"][0]
    cancels = [r for r in log["responses"] if r["method"] == "POST" and r["path"].endswith("/cancel")]
    assert [r["status"] for r in cancels] == [200]  # the dismissed confirm sent nothing
    assert "批次已取消" in page.text('.notice[data-ok="true"]')

    page.click(batch_row(each["batch_id"]))  # a click lists its tasks
    page.wait(f'#task-batch[data-batch-id="{each["batch_id"]}"][data-status="completed"]')
    strip = page.text("#task-batch")
    assert each["batch_id"] in strip and "completed 1" in strip and "failed 1" in strip and "null" not in strip
    page.wait(task_row(first_task, status="completed"))
    page.wait(task_row(second_task, status="failed"))
    assert page.count("#tasks tbody tr") == 2
    assert page.eval("document.querySelector('#task-filters [name=batch_id]').value") == each["batch_id"]
    page.screenshot("batch-tasks")


def test_batches_view_follows_a_batch_created_while_it_is_shown(server, devices, console):
    phone = devices("android_001")
    page = console(server, "/dashboard#/batches")
    page.wait("#batches-empty")
    created = create_batch(server, mode="each", target={"device_ids": ["android_001"]}, data={"product_ids": ["1"]})
    task_id = phone.wait("new_task")["task_id"]
    page.wait(batch_row(created["batch_id"], status="running"))
    phone.progress(task_id, 40)
    page.wait(batch_row(created["batch_id"]) + ' .progress[data-progress="40"]')
    page.click(batch_row(created["batch_id"]))
    page.wait(task_row(task_id, status="running"))
    phone.result(task_id)  # the strip above the list follows its batch
    page.wait(f'#task-batch[data-batch-id="{created["batch_id"]}"][data-status="completed"]')


# ---- the dispatch form ----


def test_dispatch_form_targets_devices_by_tags(server, devices, console):
    tagged = devices("android_001", tags=["shop-a"])
    devices("android_002")
    page = console(server, "/dashboard#/dispatch")
    page.wait('#dispatch-known-tags .tag[data-tag="shop-a"]')
    page.fill('[name="data.product_ids"]', "1")

    page.click('#dispatch-target [name="target"][value="tags"]')
    page.click("#dispatch-submit")  # no tag given: the page says so before asking the server
    page.wait('#dispatch-answer[data-ok="false"]')
    assert "INVALID_FORM" in page.text("#dispatch-answer")

    page.click('#dispatch-known-tags .tag[data-tag="shop-a"]')  # picks the tag and the tag target
    assert page.eval("document.querySelector('#dispatch-tags').value") == "shop-a"
    page.screenshot("dispatch-tags")
    page.click("#dispatch-submit")
    page.wait('#dispatch-answer[data-ok="true"][data-status="200"]')
    task_id = tagged.wait("new_task")["task_id"]
    assert f"({'android_001'})" in page.text("#dispatch-answer")
    assert server.get(f"/api/task/{task_id}").json()["task"]["tags"] == ["shop-a"]

    page.fill("#dispatch-tags", "shop-a, nowhere")  # no device has both: it waits
    page.click("#dispatch-submit")
    page.wait('#dispatch-answer[data-ok="true"][data-status="202"]')
    waiting = page.attr("#dispatch-answer [data-task-link]", "data-task-link")
    assert server.get(f"/api/task/{waiting}").json()["task"]["tags"] == ["nowhere", "shop-a"]

    page.select("#dispatch-device", "android_002")  # choosing a device goes back to the device target
    page.click("#dispatch-submit")
    page.wait('#dispatch-answer[data-ok="true"][data-status="200"]')
    assert "(android_002)" in page.text("#dispatch-answer")


def test_dispatch_form_creates_batches(server, devices, console):
    devices("android_001", tags=["shop-a"])
    devices("android_002", tags=["shop-a"])
    page = console(server, "/dashboard#/dispatch")
    page.wait('#dispatch-known-tags .tag[data-tag="shop-a"]')
    page.check("#dispatch-as-batch")
    page.wait("#batch-options")
    assert page.text("#dispatch-submit") == "创建批次"

    # each: one task per device with the tag, one at a time, aborted once half of them failed
    page.fill('[name="data.product_ids"]', "1, 2")
    page.fill("#dispatch-tags", "shop-a")
    page.fill('[name="max_in_flight"]', "1")
    page.fill('[name="abort.failure_ratio"]', "0.5")
    page.fill('[name="abort.min_finished"]', "1")
    page.screenshot("dispatch-batch")
    page.click("#dispatch-submit")
    page.wait('#dispatch-answer[data-ok="true"][data-status="201"]')
    each_id = page.attr("#dispatch-answer [data-batch-link]", "data-batch-link")
    assert "共 2 个任务" in page.text("#dispatch-answer")
    each = batch(server, each_id)
    assert (each["mode"], each["target"], each["total"]) == ("each", {"tags": ["shop-a"]}, 2)
    assert each["max_in_flight"] == 1 and each["abort"] == {"failure_ratio": 0.5, "min_finished": 1}

    # spread: one product id per line, two per task, to any device; the data fields apply to every item
    page.click('[name="mode"][value="spread"]')
    page.wait('[name="items"]')
    page.select("#dispatch-device", "")
    page.fill('[name="data.product_ids"]', "")
    page.fill('[name="data.batch_size"]', "5")
    page.fill('[name="items"]', "a\nb\nc\nd\ne")
    page.fill('[name="per_task"]', "2")
    page.fill('[name="max_in_flight"]', "")
    page.fill('[name="abort.failure_ratio"]', "")
    page.fill('[name="abort.min_finished"]', "")
    page.click("#dispatch-submit")
    page.wait(
        f'#dispatch-answer[data-ok="true"][data-status="201"] [data-batch-link]:not([data-batch-link="{each_id}"])'
    )
    spread_id = page.attr("#dispatch-answer [data-batch-link]", "data-batch-link")
    spread = batch(server, spread_id)
    assert (spread["mode"], spread["target"], spread["total"], spread["abort"]) == ("spread", {"all": True}, 3, None)
    tasks = server.get("/api/tasks", params={"batch_id": spread_id}).json()["tasks"]
    assert sorted(t["data"]["product_ids"] for t in tasks) == [["a", "b"], ["c", "d"], ["e"]]
    assert {t["data"]["batch_size"] for t in tasks} == {5}

    # items as JSON: the server's error names the item, and shows next to the items
    page.click('[name="items_format"][value="json"]')
    page.fill('[name="items"]', '[{"product_ids": ["x"]}, {"product_ids": 5}]')
    page.click("#dispatch-submit")
    page.wait('#dispatch-answer[data-ok="false"][data-status="400"]')
    assert "VALIDATION_ERROR" in page.text("#dispatch-answer")
    page.wait('label:has([name="items"]) .field-error:not(:empty)')
    assert "items.1.product_ids" in page.text('label:has([name="items"]) .field-error')
    page.fill('[name="items"]', "[1, 2]")  # not objects: the page says so
    page.click("#dispatch-submit")
    page.wait('#dispatch-answer[data-status="0"]')
    assert "INVALID_FORM" in page.text("#dispatch-answer")
    assert server.get("/api/batches").json()["total"] == 2

    page.go(f"#/tasks?batch_id={spread_id}")
    page.wait(f'#task-batch[data-batch-id="{spread_id}"]')
    page.until("document.querySelectorAll('#tasks tbody tr').length === 3")
