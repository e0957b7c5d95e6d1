-- A checkpoint and restart in the middle of open windows: the restored job finishes them
-- with the rows it saw before the restart (tumbling and hopping panes, live and frozen).
== sql
CREATE TABLE orders (customer TEXT, amount DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts)
  WITH (topic = 'orders');
INSERT INTO per_window
SELECT customer, window_start, window_end, count(*) AS orders, sum(amount) AS total,
       count(DISTINCT amount) AS amounts
FROM HOP(orders, ts, INTERVAL '10' SECOND, INTERVAL '30' SECOND)
GROUP BY customer, window_start, window_end;
== input
0 {"customer":"c1","amount":1.0,"ts":31000}
0 {"customer":"c2","amount":2.0,"ts":35000}
0 {"customer":"c1","amount":3.0,"ts":42000}
== restart
== input
0 {"customer":"c1","amount":3.0,"ts":55000}
== restart
== input
0 {"customer":"c1","amount":4.0,"ts":95000}
== expected
result per_window key=c1 {"customer":"c1","window_start":"1970-01-01T00:00:10","window_end":"1970-01-01T00:00:40","orders":1,"total":1.0,"amounts":1}
result per_window key=c2 {"customer":"c2","window_start":"1970-01-01T00:00:10","window_end":"1970-01-01T00:00:40","orders":1,"total":2.0,"amounts":1}
restarted
result per_window key=c1 {"customer":"c1","window_start":"1970-01-01T00:00:20","window_end":"1970-01-01T00:00:50","orders":2,"total":4.0,"amounts":2}
result per_window key=c2 {"customer":"c2","window_start":"1970-01-01T00:00:20","window_end":"1970-01-01T00:00:50","orders":1,"total":2.0,"amounts":1}
restarted
result per_window key=c1 {"customer":"c1","window_start":"1970-01-01T00:00:30","window_end":"1970-01-01T00:01:00","orders":3,"total":7.0,"amounts":2}
result per_window key=c2 {"customer":"c2","window_start":"1970-01-01T00:00:30","window_end":"1970-01-01T00:01:00","orders":1,"total":2.0,"amounts":1}
result per_window key=c1 {"customer":"c1","window_start":"1970-01-01T00:00:40","window_end":"1970-01-01T00:01:10","orders":2,"total":6.0,"amounts":1}
result per_window key=c1 {"customer":"c1","window_start":"1970-01-01T00:00:50","window_end":"1970-01-01T00:01:20","orders":1,"total":3.0,"amounts":1}
