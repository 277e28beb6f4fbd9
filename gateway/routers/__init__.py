"""The gateway's routes, one APIRouter per area; gateway/app.py includes them."""
