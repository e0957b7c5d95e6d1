-- A late-enough row that bridges two open sessions of a key merges them into one.
== sql
CREATE TABLE clicks (user_id TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '30' SECOND)
  WITH (topic = 'clicks');
INSERT INTO visits
SELECT user_id, window_start, window_end, count(*) AS clicks, min(ts) AS first_click, max(ts) AS last_click
FROM SESSION(clicks, ts, INTERVAL '10' SECOND)
GROUP BY user_id, window_start, window_end;
== input
0 {"user_id":"u3","ts":100000}
0 {"user_id":"u3","ts":115000}
== input
0 {"user_id":"u3","ts":108000}
0 {"user_id":"u9","ts":200000}
== expected
result visits key=u3 {"user_id":"u3","window_start":"1970-01-01T00:01:40","window_end":"1970-01-01T00:02:05","clicks":3,"first_click":"1970-01-01T00:01:40","last_click":"1970-01-01T00:01:55"}
