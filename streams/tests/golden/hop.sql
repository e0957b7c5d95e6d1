-- Hopping windows of 20 s every 10 s share 10 s panes: each row counts in two windows.
== sql
CREATE TABLE clicks (user_id TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (topic = 'clicks');
INSERT INTO clicks_per_user
SELECT user_id, window_start, window_end, count(*) AS clicks, min(ts) AS first_click
FROM HOP(clicks, ts, INTERVAL '10' SECOND, INTERVAL '20' SECOND)
GROUP BY user_id, window_start, window_end;
== input
0 {"user_id":"u1","ts":1000}
0 {"user_id":"u2","ts":5000}
0 {"user_id":"u1","ts":12000}
== input
0 {"user_id":"u1","ts":25000}
== input
0 {"user_id":"u1","ts":45000}
== expected
result clicks_per_user key=u1 {"user_id":"u1","window_start":"1969-12-31T23:59:50","window_end":"1970-01-01T00:00:10","clicks":1,"first_click":"1970-01-01T00:00:01"}
result clicks_per_user key=u2 {"user_id":"u2","window_start":"1969-12-31T23:59:50","window_end":"1970-01-01T00:00:10","clicks":1,"first_click":"1970-01-01T00:00:05"}
result clicks_per_user key=u1 {"user_id":"u1","window_start":"1970-01-01T00:00:00","window_end":"1970-01-01T00:00:20","clicks":2,"first_click":"1970-01-01T00:00:01"}
result clicks_per_user key=u2 {"user_id":"u2","window_start":"1970-01-01T00:00:00","window_end":"1970-01-01T00:00:20","clicks":1,"first_click":"1970-01-01T00:00:05"}
result clicks_per_user key=u1 {"user_id":"u1","window_start":"1970-01-01T00:00:10","window_end":"1970-01-01T00:00:30","clicks":2,"first_click":"1970-01-01T00:00:12"}
result clicks_per_user key=u1 {"user_id":"u1","window_start":"1970-01-01T00:00:20","window_end":"1970-01-01T00:00:40","clicks":1,"first_click":"1970-01-01T00:00:25"}
