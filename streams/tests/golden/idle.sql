-- Watermarks per queue: with two queues declared, queue 1 delivering nothing holds the
-- watermark back (its first rows may be old); once it is reported idle the minute closes.
-- Out-of-order rows within the watermark delay still count.
== sql
CREATE TABLE readings (sensor TEXT, value BIGINT, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND) WITH (topic = 'readings');
INSERT INTO per_minute
SELECT sensor, window_end, max(value) AS peak, count(*) AS readings
FROM TUMBLE(readings, ts, INTERVAL '1' MINUTE)
GROUP BY sensor, window_start, window_end;
== queues 2
== input
0 {"sensor":"s1","value":5,"ts":10000}
0 {"sensor":"s1","value":9,"ts":75000}
0 {"sensor":"s1","value":7,"ts":58000}
== input
0 {"sensor":"s1","value":1,"ts":140000}
== idle 1
== expected
result per_minute key=s1 {"sensor":"s1","window_end":"1970-01-01T00:01:00","peak":7,"readings":2}
result per_minute key=s1 {"sensor":"s1","window_end":"1970-01-01T00:02:00","peak":9,"readings":1}
