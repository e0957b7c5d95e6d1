-- A window join: impressions and clicks of the same ad within the same minute, emitted once
-- when both tables' watermarks pass the minute; the joined rows survive a restart; a click
-- for a minute already emitted is late.
== sql
CREATE TABLE impressions (ad TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (topic = 'impressions');
CREATE TABLE clicks (ad TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (topic = 'clicks');
INSERT INTO ad_minutes
SELECT i.ad, i.window_start, count(DISTINCT i.ts) AS shown, count(DISTINCT c.ts) AS clicked
FROM TUMBLE(impressions, ts, INTERVAL '1' MINUTE) i
JOIN TUMBLE(clicks, ts, INTERVAL '1' MINUTE) c
  ON i.ad = c.ad AND i.window_start = c.window_start AND i.window_end = c.window_end
GROUP BY i.ad, i.window_start;
== input
0 {"ad":"x","ts":1000}
0 {"ad":"x","ts":2000}
0 {"ad":"y","ts":3000}
clicks/0 {"ad":"x","ts":5000}
== restart
== input
clicks/0 {"ad":"y","ts":61000}
0 {"ad":"x","ts":62000}
clicks/0 {"ad":"x","ts":70000}
== input
clicks/0 {"ad":"x","ts":4000}
0 {"ad":"z","ts":130000}
clicks/0 {"ad":"z","ts":130000}
== expected
restarted
result ad_minutes key=- {"ad":"x","window_start":"1970-01-01T00:00:00","shown":2,"clicked":1}
late %LATE%golden key=- {"ad":"x","ts":4000} (late: its window closed (event time 4000 ms))
result ad_minutes key=- {"ad":"x","window_start":"1970-01-01T00:01:00","shown":1,"clicked":1}
