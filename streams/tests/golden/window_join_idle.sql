-- A window join whose second table goes quiet: while it is active its watermark holds the
-- join back; once every queue of it is idle it no longer does, and the minutes the other
-- table's watermark passed are emitted.
== sql
CREATE TABLE impressions (ad TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (topic = 'impressions');
CREATE TABLE clicks (ad TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (topic = 'clicks');
INSERT INTO ad_minutes
SELECT i.ad, i.window_start, count(DISTINCT i.ts) AS shown, count(DISTINCT c.ts) AS clicked
FROM TUMBLE(impressions, ts, INTERVAL '1' MINUTE) i
JOIN TUMBLE(clicks, ts, INTERVAL '1' MINUTE) c
  ON i.ad = c.ad AND i.window_start = c.window_start AND i.window_end = c.window_end
GROUP BY i.ad, i.window_start;
== queues clicks/1
== input
0 {"ad":"x","ts":1000}
clicks/0 {"ad":"x","ts":5000}
0 {"ad":"x","ts":61000}
0 {"ad":"x","ts":125000}
== idle clicks/0
== input
0 {"ad":"x","ts":190000}
== expected
result ad_minutes key=- {"ad":"x","window_start":"1970-01-01T00:00:00","shown":1,"clicked":1}
