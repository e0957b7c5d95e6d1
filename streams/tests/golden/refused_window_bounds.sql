-- Below a HOP (or SESSION) aggregate a row carries its pane's bounds, not its windows':
-- a filter on window_end is refused at planning instead of silently filtering panes.
== sql
CREATE TABLE orders (customer TEXT, amount DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts)
  WITH (topic = 'orders');
INSERT INTO recent
SELECT customer, window_start, window_end, sum(amount) AS total
FROM HOP(orders, ts, INTERVAL '10' SECOND, INTERVAL '30' SECOND)
WHERE window_end > TIMESTAMP '1970-01-01 00:00:40'
GROUP BY customer, window_start, window_end;
== input
0 {"customer":"c1","amount":10.0,"ts":1000}
== expected
error cannot plan: INSERT INTO recent: CAST(__weir_window_0.window_end AS Timestamp(ns)) > CAST(Utf8("1970-01-01 00:00:40") AS Timestamp(ns)): with HOP and SESSION windows, window_start and window_end may only be grouped by and selected; a window's bounds are known only when it closes
