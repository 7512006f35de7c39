"""An independent ROS 2 camera for the bridge tests: publishes sensor_msgs/Image the way
rmw_zenoh (Jazzy) does, with nothing from the bridge's code, and reads the bridge's outputs back.

- Image CDR and the RIHS01 type hash: rosbags (the same serializer ROS 2 bag tools use).
- Key `<domain>/<topic without slashes>/sensor_msgs::msg::dds_::Image_/<hash>` and the 33-byte
  attachment (i64 sequence number, i64 source timestamp ns, GID length 16, GID): from rmw_zenoh's
  docs/design.md, liveliness_utils.cpp and attachment_helpers.cpp.
- Transport: the Python zenoh binding (eclipse-zenoh), a peer listening on one loopback endpoint
  with multicast scouting off.

Reads a JSON job on stdin, prints `ready` once its session listens, then one JSON report line:
{"published": [...], "outputs": [...], "tokens": [...], "diagnostics": [...]} (every
DiagnosticArray on /diagnostics, decoded by rosbags).

Job fields: endpoint, domain, topic, outputs (key expression of the bridge's outputs),
frames: [{encoding, height, width, pad, frame_id, corrupt}], mode "paced" (one frame at a
time, the next once its outputs arrived, or after `settle` s for a frame that should give none)
or "stream" (`rate` Hz until `want` frames have all `tasks` outputs), timeout (s);
typed: [{key, type}] (outputs of other types, each decoded by rosbags into plain JSON and
reported under "typed"); label_info (a key expression read after the frames by a late-joining
zenoh-ext AdvancedSubscriber with history, as rmw_zenoh subscribes to a transient-local topic;
reported under "label_info").
"""
import json
import os
import struct
import sys
import time

import numpy as np
import zenoh
import zenoh.ext

# The Jazzy type store with vision_msgs registered, and rosbags messages as plain JSON.
from ros_msgs import plain, ts
Image = ts.types["sensor_msgs/msg/Image"]
Header = ts.types["std_msgs/msg/Header"]
Time = ts.types["builtin_interfaces/msg/Time"]
TYPE = "sensor_msgs/msg/Image"
HASH = ts.hash_rihs01(TYPE)
DDS_NAME = "sensor_msgs::msg::dds_::Image_"
CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "yuv422": 2, "16UC1": 2}

job = json.load(sys.stdin)
conf = zenoh.Config()
conf.insert_json5("mode", '"peer"')
conf.insert_json5("listen/endpoints", json.dumps([job["endpoint"]]))
conf.insert_json5("scouting/multicast/enabled", "false")
session = zenoh.open(conf)

key = f"{job['domain']}/{job['topic'].strip('/')}/{DDS_NAME}/{HASH}"
pub = session.declare_publisher(key, congestion_control=zenoh.CongestionControl.BLOCK)
gid = os.urandom(16)

outputs = []


def on_output(sample):
    recv_ns = time.time_ns()
    att = sample.attachment
    att = att.to_bytes() if att is not None else b""
    msg = ts.deserialize_cdr(bytes(sample.payload.to_bytes()), TYPE)
    outputs.append({
        "key": str(sample.key_expr),
        "sec": int(msg.header.stamp.sec),
        "nanosec": int(msg.header.stamp.nanosec),
        "frame_id": msg.header.frame_id,
        "encoding": msg.encoding,
        "height": int(msg.height),
        "width": int(msg.width),
        "attachment_len": len(att),
        "recv_ns": recv_ns,
    })


sub = session.declare_subscriber(job["outputs"], on_output)

typed = []


def typed_handler(ros_type):
    def on_sample(sample):
        att = sample.attachment
        msg = ts.deserialize_cdr(bytes(sample.payload.to_bytes()), ros_type)
        typed.append({"key": str(sample.key_expr), "type": ros_type, "msg": plain(msg),
                      "attachment_len": len(att.to_bytes()) if att is not None else 0})
    return on_sample


typed_subs = [session.declare_subscriber(t["key"], typed_handler(t["type"]))
              for t in job.get("typed", [])]

# /diagnostics, keyed by rosbags' own hash of DiagnosticArray: a report under another hash
# never arrives here.
DIAG = "diagnostic_msgs/msg/DiagnosticArray"
diagnostics = []


def on_diagnostics(sample):
    att = sample.attachment
    msg = ts.deserialize_cdr(bytes(sample.payload.to_bytes()), DIAG)
    diagnostics.append({
        "key": str(sample.key_expr),
        "attachment_len": len(att.to_bytes()) if att is not None else 0,
        "sec": int(msg.header.stamp.sec),
        "status": [{"level": int(st.level), "name": st.name, "message": st.message,
                    "hardware_id": st.hardware_id,
                    "values": {kv.key: kv.value for kv in st.values}} for st in msg.status],
    })


# Camera calibration: with job["camera_info"] ({fx, fy, cx, cy, height, width}), a CameraInfo
# on the image topic's sibling `camera_info`, published before every frame; the bridge's scaled
# ones are read back from job["camera_info_out"] (a key expression).
CI = "sensor_msgs/msg/CameraInfo"
CI_KEY_TYPE = f"sensor_msgs::msg::dds_::CameraInfo_/{ts.hash_rihs01(CI)}"
camera_infos = []
info_pub = None
if job.get("camera_info"):
    parent = job["topic"].strip("/").rsplit("/", 1)[0]
    info_pub = session.declare_publisher(f"{job['domain']}/{parent}/camera_info/{CI_KEY_TYPE}")


def on_camera_info(sample):
    m = ts.deserialize_cdr(bytes(sample.payload.to_bytes()), CI)
    camera_infos.append({
        "key": str(sample.key_expr), "sec": int(m.header.stamp.sec),
        "nanosec": int(m.header.stamp.nanosec), "frame_id": m.header.frame_id,
        "height": int(m.height), "width": int(m.width), "k": [float(v) for v in m.k],
        "p": [float(v) for v in m.p], "d": [float(v) for v in m.d],
        "distortion_model": m.distortion_model,
    })


info_sub = (session.declare_subscriber(job["camera_info_out"], on_camera_info)
            if job.get("camera_info_out") else None)


def publish_camera_info():
    c = job["camera_info"]
    RoI = ts.types["sensor_msgs/msg/RegionOfInterest"]
    msg = ts.types[CI](
        header=Header(stamp=Time(sec=0, nanosec=0), frame_id="camera_front"),
        height=c["height"], width=c["width"], distortion_model="plumb_bob",
        d=np.array([0.1, -0.05, 0.0, 0.0, 0.0]),
        k=np.array([c["fx"], 0, c["cx"], 0, c["fy"], c["cy"], 0, 0, 1], dtype=np.float64),
        r=np.eye(3).flatten(),
        p=np.array([c["fx"], 0, c["cx"], 0, 0, c["fy"], c["cy"], 0, 0, 0, 1, 0], dtype=np.float64),
        binning_x=0, binning_y=0,
        roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    info_pub.put(bytes(ts.serialize_cdr(msg, CI)),
                 attachment=struct.pack("<qqB", 0, time.time_ns(), 16) + os.urandom(16))


diag_sub = session.declare_subscriber(
    f"{job['domain']}/diagnostics/diagnostic_msgs::msg::dds_::DiagnosticArray_/{ts.hash_rihs01(DIAG)}",
    on_diagnostics)
print("ready", flush=True)


def matched():
    m = pub.matching_status
    return m if isinstance(m, bool) else m.matching


t_end = time.monotonic() + job["timeout"]
while not matched():
    if time.monotonic() > t_end:
        print(json.dumps({"error": "no subscriber matched " + key}), flush=True)
        # Not sys.exit: zenoh's threads can keep a failing camera (and its test) waiting.
        os._exit(1)
    time.sleep(0.01)
# rmw_zenoh subscriptions announce themselves with an MS liveliness token (ros2 topic info).
tokens = [str(r.ok.key_expr) for r in session.liveliness().get(f"@ros2_lv/{job['domain']}/**")
          if r.ok is not None]

seq = 0
published = []

# The class names, joined late: declared once the first output arrived, so after the bridge
# published them (it does so before its first frame); only a transient-local publisher's
# cache can answer.
label_info = []
late = None


def join_late_for_labels():
    global late
    if late is not None or not job.get("label_info") or not outputs:
        return

    def on_labels(sample):
        label_info.append(plain(ts.deserialize_cdr(bytes(sample.payload.to_bytes()),
                                                   "vision_msgs/msg/LabelInfo")))
    late = zenoh.ext.declare_advanced_subscriber(
        session, job["label_info"], on_labels,
        history=zenoh.ext.HistoryConfig(detect_late_publishers=True))



def publish(spec):
    """One Image from a frame spec; returns its stamp as (sec, nanosec)."""
    global seq
    if info_pub is not None:
        publish_camera_info()
    seq += 1
    h, w, enc = spec["height"], spec["width"], spec["encoding"]
    step = w * CHANNELS[enc] + spec.get("pad", 0)
    rng = np.random.default_rng(seq)
    data = rng.integers(0, 256, size=h * step, dtype=np.uint8)
    now = time.time_ns()
    stamp = (now // 1_000_000_000, now % 1_000_000_000)
    msg = Image(
        header=Header(stamp=Time(sec=stamp[0], nanosec=stamp[1]),
                      frame_id=spec.get("frame_id", "camera_front")),
        height=h, width=w, encoding=enc, is_bigendian=0, step=step, data=data)
    cdr = bytes(ts.serialize_cdr(msg, TYPE))
    corrupt = spec.get("corrupt")
    if corrupt == "truncated":
        cdr = cdr[: len(cdr) // 2]
    elif corrupt == "short_data":
        # step × height no longer fits the data: cut the sequence and fix its length.
        n = len(data) - step
        cdr = cdr[: len(cdr) - len(data)][:-4] + struct.pack("<I", n) + data[:n].tobytes()
    attachment = struct.pack("<qqB", seq, time.time_ns(), 16) + gid
    if corrupt == "no_attachment":
        pub.put(cdr)
    else:
        pub.put(cdr, attachment=attachment)
    published.append({"seq": seq, "sec": stamp[0], "nanosec": stamp[1], "encoding": enc,
                      "height": h, "width": w, "frame_id": spec.get("frame_id", "camera_front"),
                      "corrupt": corrupt, "pub_ns": now})
    return stamp


def answered(stamp):
    return sum(1 for o in list(outputs) if (o["sec"], o["nanosec"]) == stamp)


tasks = job.get("tasks", 3)
if job["mode"] == "paced":
    for spec in job["frames"]:
        stamp = publish(spec)
        if spec.get("expect_output", True):
            while answered(stamp) < tasks and time.monotonic() < t_end:
                time.sleep(0.002)
            join_late_for_labels()
        else:
            time.sleep(job.get("settle", 0.3))
else:
    spec = job["frames"][0]
    period = 1.0 / job["rate"]
    nxt = time.monotonic()
    while time.monotonic() < t_end:
        stamps = {(o["sec"], o["nanosec"]) for o in list(outputs)}
        join_late_for_labels()
        if sum(1 for s in stamps if answered(s) >= tasks) >= job["want"]:
            break
        publish(spec)
        nxt += period
        time.sleep(max(0.0, nxt - time.monotonic()))
# Let the last outputs arrive.
time.sleep(0.3)
t_labels = time.monotonic() + 10
while late is not None and not label_info and time.monotonic() < t_labels:
    time.sleep(0.01)
print(json.dumps({"published": published, "outputs": list(outputs), "tokens": tokens,
                  "key": key, "diagnostics": list(diagnostics),
                  "camera_infos": list(camera_infos), "typed": list(typed),
                  "label_info": label_info}), flush=True)
sub.undeclare()
diag_sub.undeclare()
session.close()
