//! The deduplication-window probe against the real engine: windows set too small,
//! set on no table (the server default, 0), altered, and the windows the collector
//! gives the tables it creates.

use std::time::Duration;

use collector::schema::{
    create_statements, deduplicated_tables, needed_window, probe_dedup_windows, SchemaOptions,
};
use testkit::{clickhouse_url, eventually, test_config, unique_database, TestCollector};

async fn create(client: &clickhouse::Client, database: &str, window: u32) {
    let opts = SchemaOptions {
        database: database.into(),
        ttl_days: 0,
        cluster: None,
        dedup_window: window,
    };
    for sql in create_statements(&opts) {
        client.query(&sql).execute().await.expect(&sql);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_missing_or_below_the_backlog_are_reported() {
    let client = clickhouse::Client::default().with_url(clickhouse_url());
    let tables = deduplicated_tables();

    // A window on every table, but smaller than needed.
    let small = unique_database("dedup_small");
    create(&client, &small, 5).await;
    let problems = probe_dedup_windows(&client, &small, 100).await.unwrap();
    assert_eq!(problems.len(), tables.len(), "{problems:#?}");
    for p in &problems {
        assert_eq!(
            (p.window, p.set_on_table, p.needed),
            (5, true, 100),
            "{p:?}"
        );
        assert_eq!(p.setting, "non_replicated_deduplication_window");
        assert!(p
            .to_string()
            .contains("MODIFY SETTING non_replicated_deduplication_window = 100"));
    }
    // Enough for what is needed: nothing to say.
    assert_eq!(probe_dedup_windows(&client, &small, 5).await.unwrap(), []);

    // Widened by hand (as the report says to): that table drops out.
    client
        .query(&format!(
            "ALTER TABLE `{small}`.otel_logs MODIFY SETTING non_replicated_deduplication_window = 100"
        ))
        .execute()
        .await
        .unwrap();
    let problems = probe_dedup_windows(&client, &small, 100).await.unwrap();
    assert_eq!(problems.len(), tables.len() - 1);
    assert!(problems.iter().all(|p| !p.table.ends_with(".otel_logs")));

    // Set on no table: the server default (0 for MergeTree) applies.
    let unset = unique_database("dedup_unset");
    create(&client, &unset, 0).await;
    let problems = probe_dedup_windows(&client, &unset, 1).await.unwrap();
    assert_eq!(problems.len(), tables.len(), "{problems:#?}");
    for p in &problems {
        assert_eq!((p.window, p.set_on_table), (0, false), "{p:?}");
        assert!(p.to_string().contains("does not deduplicate"), "{p}");
    }

    for db in [small, unset] {
        client
            .query(&format!("DROP DATABASE `{db}`"))
            .execute()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_reports_small_windows_and_sizes_the_tables_it_creates() {
    let client = clickhouse::Client::default().with_url(clickhouse_url());

    // Tables made earlier with a window of 5: creating the schema again (IF NOT
    // EXISTS) leaves them as they are, and the collector says so.
    let database = unique_database("dedup_app_small");
    create(&client, &database, 5).await;
    let config = test_config(&database);
    let needed = needed_window(config.spool.max_disk_bytes, config.batching.max_bytes);
    let c = TestCollector::start_with(config).await;
    let report = eventually(Duration::from_secs(30), || async {
        c.collector.dedup_window_report()
    })
    .await
    .expect("the deduplication windows are checked once the schema is ready");
    assert_eq!(report.len(), deduplicated_tables().len(), "{report:#?}");
    assert!(report.iter().all(|p| p.window == 5 && p.needed == needed));
    c.stop().await;

    // A spool that holds many batches: the tables the collector creates get a
    // window for all of them, and there is nothing to report.
    let database = unique_database("dedup_app_big");
    let mut config = test_config(&database);
    config.spool.max_disk_bytes = 10 << 30;
    config.batching.max_bytes = 1 << 20;
    let needed = needed_window(config.spool.max_disk_bytes, config.batching.max_bytes);
    assert_eq!(needed, 102_400);
    let c = TestCollector::start_with(config).await;
    let report = eventually(Duration::from_secs(30), || async {
        c.collector.dedup_window_report()
    })
    .await
    .unwrap();
    assert_eq!(report, []);
    assert_eq!(
        probe_dedup_windows(&client, &database, needed)
            .await
            .unwrap(),
        []
    );
    assert_eq!(
        probe_dedup_windows(&client, &database, needed + 1)
            .await
            .unwrap()
            .len(),
        deduplicated_tables().len()
    );
    c.stop().await;
}
