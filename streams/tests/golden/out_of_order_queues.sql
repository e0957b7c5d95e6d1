-- Before any window was emitted, a queue's older rows still count even when another queue
-- is ahead; after a long gap, a row newer than the watermark still lands in its window.
== sql
CREATE TABLE readings (sensor TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
  WITH (topic = 'readings');
INSERT INTO per_minute
SELECT sensor, window_start, count(*) AS readings
FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE)
GROUP BY sensor, window_start, window_end;
== queues 2
== input
0 {"sensor":"s1","ts":61000}
== input
1 {"sensor":"s1","ts":59000}
== input
0 {"sensor":"s1","ts":66000}
1 {"sensor":"s1","ts":70000}
== input
0 {"sensor":"s1","ts":600000}
1 {"sensor":"s1","ts":600000}
== input
0 {"sensor":"s1","ts":597000}
1 {"sensor":"s1","ts":700000}
0 {"sensor":"s1","ts":700000}
== expected
result per_minute key=s1 {"sensor":"s1","window_start":"1970-01-01T00:00:00","readings":1}
result per_minute key=s1 {"sensor":"s1","window_start":"1970-01-01T00:01:00","readings":3}
result per_minute key=s1 {"sensor":"s1","window_start":"1970-01-01T00:09:00","readings":1}
result per_minute key=s1 {"sensor":"s1","window_start":"1970-01-01T00:10:00","readings":2}
