//! Section 1: one async plugin call through the `.so` versus the rlib.

use crate::common::*;
use plugin_api::CallContext;
use std::{path::Path, time::Duration};

pub(crate) const CALLS: u32 = 20_000;

pub(crate) fn ffi_call_cost(profile: &Path, state: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = oh_host::config::load(profile).unwrap_or_else(|e| panic!("{e}"));
    let registry = oh_host::registry::Registry::build(&config, rt.handle().clone()).unwrap_or_else(|e| panic!("{e}"));

    // The same crate through dlopen, called directly (no deadline, counters or decoding), and
    // linked into this binary.
    let store_config = serde_json::json!({ "root": state }).to_string();
    let (dynamic_settings, dynamic) = raw_instances(&config.server.plugins_dir, &store_config);
    let static_lib = plugin_sdk::Registry::from_register(file_stores::register);
    let static_conversations = static_lib.build_conversation_store("FileConversationStore", &store_config).unwrap();
    let static_settings = static_lib.build_settings_store("FileSettingsStore", &store_config).unwrap();

    rt.block_on(async {
        // A settings document to read back (about 1 KB on disk, one sealed field).
        let settings = serde_json::json!({ "llm_model": "gpt-4o", "llm_api_key": "sk-bench", "language": "en" });
        registry.store_settings(CallContext::default(), &serde_json::from_value(settings).unwrap()).await.unwrap();

        let health_so = per_call(CALLS, || async {
            dynamic.health(CallContext::default()).await.unwrap();
        })
        .await;
        let health_rlib = per_call(CALLS, || async {
            static_conversations.health(CallContext::default()).await.unwrap();
        })
        .await;
        let load_so = per_call(CALLS / 4, || async {
            dynamic_settings.load(CallContext::default()).await.unwrap();
        })
        .await;
        let load_rlib = per_call(CALLS / 4, || async {
            static_settings.load(CallContext::default()).await.unwrap();
        })
        .await;
        let host_path = per_call(CALLS / 4, || async {
            registry.load_settings(CallContext::default()).await.unwrap();
        })
        .await;

        println!("\n1. one async plugin call, .so (dlopen) vs the same crate linked statically (rlib)");
        println!("   {:<44} {:>10} {:>10} {:>8}", "call", ".so µs", "rlib µs", "ratio");
        println!(
            "   {:<44} {:>10.2} {:>10.2} {:>8.2}",
            "conversation_store.health (no I/O)",
            health_so,
            health_rlib,
            health_so / health_rlib
        );
        println!(
            "   {:<44} {:>10.2} {:>10.2} {:>8.2}",
            "settings_store.load (file read + decrypt)",
            load_so,
            load_rlib,
            load_so / load_rlib
        );
        println!(
            "   {:<44} {:>10.2}   (deadline, catch_unwind, counters, JSON decode)",
            "same load through the host's Registry", host_path
        );
    });
    rt.block_on(registry.shutdown(Duration::from_secs(2)));
}

/// A settings store and a conversation store of `libfile_stores.so`, built with its factories
/// directly (the loader's checks, then no registry around them).
pub(crate) fn raw_instances(
    plugins_dir: &Path,
    store_config: &str,
) -> (plugin_api::SettingsStoreObject, plugin_api::ConversationStoreObject) {
    use plugin_api::abi_stable::{sabi_trait::TD_Opaque, std_types::RStr};
    struct NoServices;
    impl plugin_api::HostServices for NoServices {
        fn call(
            &self,
            _: CallContext,
            _: plugin_api::ExtensionPoint,
            _: plugin_api::abi_stable::std_types::RString,
            _: plugin_api::abi_stable::std_types::RString,
        ) -> plugin_api::FfiFuture<plugin_api::PResult<plugin_api::abi_stable::std_types::RString>> {
            use plugin_api::async_ffi::FutureExt as _;
            async { plugin_api::PResult::RErr(plugin_api::PluginError::unavailable("benchmark")) }.into_ffi()
        }
        fn app_mode(&self) -> plugin_api::AppMode {
            plugin_api::AppMode::OSS
        }
        fn state_dir(&self) -> plugin_api::abi_stable::std_types::RString {
            "".into()
        }
    }
    let services = || plugin_api::HostServices_TO::from_value(NoServices, TD_Opaque);
    let lib = oh_host::loader::load(plugins_dir, "file_stores", None).unwrap_or_else(|e| panic!("{e}"));
    oh_host::loader::init(&lib, "{}").unwrap_or_else(|e| panic!("{e}"));
    let cfg = RStr::from_str(store_config);
    let oh_host::loader::Root::Current(module) = lib.module else {
        panic!("file_stores is built against this contract")
    };
    let settings = (module.new_settings_store())(RStr::from_str("FileSettingsStore"), cfg, services()).unwrap();
    let conversations =
        (module.new_conversation_store())(RStr::from_str("FileConversationStore"), cfg, services()).unwrap();
    (settings, conversations)
}
