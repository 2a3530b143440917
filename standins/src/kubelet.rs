// SPDX-License-Identifier: Apache-2.0
//! The kubelet stand-in: answers `--version`; otherwise records how the
//! kubelet unit started it and idles, as a service would (exiting would make
//! systemd restart it every few seconds). AIRLOCK_STANDIN_KUBELET_EXIT makes
//! it return at once (tests on the build host).

use crate::common::{say, Call, Check};
use crate::VERSION;

pub fn main(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "--version" || a == "version") {
        println!("Kubernetes {VERSION} (airlock stand-in)");
        return 0;
    }
    let mut call = Call::new("kubelet", args);
    let config = args
        .iter()
        .find_map(|a| a.strip_prefix("--config="))
        .map(String::from);
    if let Some(c) = &config {
        // Before kubeadm ran the file does not exist yet; the real kubelet
        // would exit and be restarted. Only noted.
        let exists = std::path::Path::new(c).is_file();
        call.checks.push(Check {
            name: "config-present".into(),
            ok: exists,
            detail: c.clone(),
        });
    }
    let code = call.finish();
    if code != 0 || std::env::var_os("AIRLOCK_STANDIN_KUBELET_EXIT").is_some() {
        return code;
    }
    say("kubelet", "not a kubelet: recorded the arguments; idling");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
