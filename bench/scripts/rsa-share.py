#!/usr/bin/env python3
"""`perf script -F ip,sym,dso` with call graphs on stdin: the share of samples inside aws-lc's
RSA private transform, the whole-process ratio (1 / share), and the other samples by
component: the first pattern matching a frame, from the leaf up."""
import collections
import re
import sys

PRIVATE = re.compile(r"rsa_default_private_transform")
COMPONENTS = [
    ("RSA public: signature checks", r"rsa_verify_raw|RSA_verify"),
    ("RSA public: envelope to the device", r"RSA_encrypt"),
    ("AES", r"aes_|EVP_Cipher"),
    ("SHA", r"sha256|sha1_|SHA256"),
    ("random", r"rdrand|RAND_bytes|CTR_DRBG"),
    ("logging", r"tracing_subscriber|tracing_core"),
    ("metrics", r"metrics_exporter|metrics_util|scep_gateway::metrics"),
    ("CSR", r"scep_gateway::csr"),
    ("CertRep", r"certrep::build|envelope::seal"),
    ("request parse/verify/open", r"SignedRequest::|envelope::open"),
    ("CA (certificate)", r"scep_gateway::ca::"),
    ("store", r"scep_gateway::store|dashmap|redis::"),
    ("enroll (other)", r"scep_gateway::enroll"),
    ("HTTP (routes, hyper)", r"scep_gateway::http|hyper::|hyper_util"),
    ("tokio", r"tokio::|mio::"),
]
COMPONENTS = [(name, re.compile(p)) for name, p in COMPONENTS]


def samples(lines):
    frames = []
    for line in lines:
        if line[:1] in (" ", "\t") and line.strip():
            parts = line.split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else parts[0])
        elif frames:
            yield frames
            frames = []
    if frames:
        yield frames


def component(frames):
    kernel = "[kernel.kallsyms]" in frames[0]
    for frame in frames:
        for name, pattern in COMPONENTS:
            if pattern.search(frame.rsplit(" (", 1)[0]):
                return name + (" (in the kernel)" if kernel else "")
    return "other" + (" (in the kernel)" if kernel else "")


counts = collections.Counter()
total = private = 0
for frames in samples(sys.stdin):
    total += 1
    if any(PRIVATE.search(f) for f in frames):
        private += 1
    else:
        counts[component(frames)] += 1
if not total or not private:
    sys.exit("no samples in the RSA private transform: was the gateway under load?")
share = private / total
print(f"samples: {total}; in the RSA private transform: {100 * share:.1f} %")
print(f"whole-process ratio (CPU / RSA private operations): {1 / share:.3f}")
print("the other samples, as a share of all:")
shown = 0
for name, n in counts.most_common():
    if n / total >= 0.001:
        print(f"  {100 * n / total:5.1f} %  {name}")
        shown += n
print(f"  {100 * (total - private - shown) / total:5.1f} %  the rest, each below 0.1 %")
